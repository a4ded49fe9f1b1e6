"""Features of your own images with a trained model, saved as .npz.

    python tools/extract_features.py --config_file output/run/config.yaml \
        --images DIR_OR_LIST --output feats.npz TEST.WEIGHT output/run/ViT-B-16_60.pth

--images takes a folder (every image under it), a list file ('<path> [pid [camid]]' per
line, paths relative to the list) or one image; --split query|gallery|train takes a split of
the config's dataset instead. The .npz holds 'features' (L2-normalised float32, exactly
the test scripts' features), 'paths' and, when known, 'pids' and 'camids'.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import make_parser, parse_args  # noqa: E402
from datasets import init_dataset  # noqa: E402
from datasets.image_lists import SPLITS, read_images, split_images  # noqa: E402
from datasets.make_dataloader import dataset_kwargs  # noqa: E402
from processor import FeatureExtractor  # noqa: E402
from processor.gallery import save_gallery  # noqa: E402
from utils.errors import cli_main  # noqa: E402
from utils.logger import setup_logger  # noqa: E402


def main():
    parser = make_parser('Extract re-ID features of images into an .npz file')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--images', help='a folder, a list file or an image')
    source.add_argument('--split', choices=SPLITS, help="a split of the config's dataset")
    parser.add_argument('--output', required=True, help='the .npz file to write')
    args = parse_args('', parser=parser)
    logger = setup_logger()
    extractor = FeatureExtractor(args.config_file, None, args.opts)
    if args.split:
        cfg = extractor.cfg
        dataset = init_dataset(cfg.DATASETS.NAMES, root=cfg.DATASETS.ROOT_DIR,
                               **dataset_kwargs(cfg, training=args.split == 'train'))
        images = split_images(dataset, args.split)
    else:
        images = read_images(args.images)
    features = extractor(images.paths, images.camids, images.viewids)
    path = save_gallery(args.output, features.numpy(), images, extractor)
    logger.info('features of %d images (%d values each) written to %s', len(images),
                features.shape[1], path)


if __name__ == '__main__':
    cli_main(main)()
