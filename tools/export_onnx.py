"""Export a trained model to ONNX for serving.

    python tools/export_onnx.py --config_file output/run/config.yaml --output model.onnx \
        TEST.WEIGHT output/run/ViT-B-16_60.pth

Input 'images': a float32 batch [N, 3, H, W] (N free; H, W = INPUT.SIZE_TEST), each RGB
image resized as the test transform does, scaled to 0..1, minus INPUT.PIXEL_MEAN, divided
by INPUT.PIXEL_STD (printed below and stored in the model's metadata). Output 'features':
[N, D], the evaluation feature, L2-normalised (TEST.FEAT_NORM yes): compare features by
dot product or euclidean distance. SIE models are exported without the camera embedding.
The export is then checked with onnxruntime against PyTorch on a batch of test images.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from config import make_parser, parse_args  # noqa: E402
from processor import FeatureExtractor  # noqa: E402
from processor.export import (ExportedFeatures, export_onnx, onnx_features,  # noqa: E402
                              preprocessing)
from utils.errors import ReIDError, cli_main  # noqa: E402
from utils.logger import setup_logger  # noqa: E402

TOLERANCE = 1e-4  # largest difference allowed between ONNX and PyTorch features


def main():
    parser = make_parser('Export a re-ID model to ONNX')
    parser.add_argument('--output', required=True, help='the .onnx file to write')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset version')
    args = parse_args('', parser=parser)
    logger = setup_logger()
    extractor = FeatureExtractor(args.config_file, None, args.opts, device='cpu')
    batch = torch.rand(4, 3, *extractor.cfg.INPUT.SIZE_TEST, generator=torch.Generator()
                       .manual_seed(0)) * 4 - 2
    with torch.no_grad():
        reference = ExportedFeatures(extractor.model, extractor.normalises)(batch).numpy()
    differences = []

    def check(written):  # before the file replaces --output: a refused export leaves nothing
        differences.append(abs(onnx_features(written, batch) - reference).max())
        if differences[0] > TOLERANCE:
            raise ReIDError(f'{args.output}: onnxruntime features differ from PyTorch by '
                            f'{differences[0]:.2e} (more than {TOLERANCE:g}); not written')

    path = export_onnx(extractor, args.output, args.opset, verify=check)
    logger.info('ONNX model written to %s: input %s [N, 3, %d, %d], output %s [N, %d]',
                path, 'images', *extractor.cfg.INPUT.SIZE_TEST, 'features',
                extractor.feature_dim)
    logger.info('preprocessing: %s', ', '.join(f'{k} {v}' for k, v in
                                               preprocessing(extractor.cfg).items()))
    logger.info('checked with onnxruntime: largest difference from PyTorch %.1e', differences[0])


if __name__ == '__main__':
    cli_main(main)()
