"""ONNX export of a FeatureExtractor's model.

The graph takes a normalised image batch 'images' [N, 3, H, W] (H, W = INPUT.SIZE_TEST; the
image resized as the test transform does, scaled to 0..1, minus INPUT.PIXEL_MEAN, divided by
INPUT.PIXEL_STD; the batch axis is dynamic) and returns 'features' [N, D]: the evaluation
feature, L2-normalised as the extractor's (TEST.FEAT_NORM). SIE models are exported without
the camera / view embedding (no label input). The preprocessing is also written into the
model's metadata (input_size, pixel_mean, pixel_std, resize).

Exported with PyTorch's TorchScript-based exporter (`dynamo=False`), which needs no package
beyond onnx; onnxruntime checks the result.
"""
import io
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets import build_transforms
from utils.atomic import atomic_write
from utils.errors import ReIDError

INPUT_NAME, OUTPUT_NAME = 'images', 'features'


class ExportedFeatures(nn.Module):
    """images -> evaluation features (normalised when `normalise`), no SIE labels."""

    def __init__(self, model, normalise):
        super().__init__()
        self.model, self.normalise = model, normalise

    def forward(self, images):
        feats = self.model(images).float()
        return F.normalize(feats, dim=1) if self.normalise else feats


def preprocessing(cfg):
    """What a serving stack must do to an RGB image before the graph (also in the metadata)."""
    return {'input_size': 'x'.join(map(str, cfg.INPUT.SIZE_TEST)),
            'pixel_mean': ','.join(map(str, cfg.INPUT.PIXEL_MEAN)),
            'pixel_std': ','.join(map(str, cfg.INPUT.PIXEL_STD)),
            'resize': build_transforms(cfg, is_train=False).transforms[0].interpolation.value}


def export_onnx(extractor, path, opset=17, verify=None):
    """Write extractor's model to path as ONNX, atomically; returns the path. `verify(file)`,
    when given, checks the written model before it replaces path (it raises to refuse it)."""
    try:
        import onnx
    except ImportError:
        raise ReIDError('ONNX export needs the onnx package: pip install onnx') from None
    cfg = extractor.cfg
    model = ExportedFeatures(extractor.model, extractor.normalises).cpu().eval()
    example = torch.zeros(2, 3, *cfg.INPUT.SIZE_TEST)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the legacy exporter and tracing explain themselves
            warnings.simplefilter('ignore')
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: 'batch'}, OUTPUT_NAME: {0: 'batch'}})
    finally:
        extractor.model.to(extractor.device)
    graph = onnx.load_model_from_string(buffer.getvalue())
    onnx.checker.check_model(graph)
    for key, value in {**preprocessing(cfg), 'weight': os.path.basename(extractor.weight),
                       'method': cfg.MODEL.METHOD}.items():
        graph.metadata_props.add(key=key, value=value)
    with atomic_write(path) as f:
        onnx.save_model(graph, f)
        if verify is not None:
            f.flush()
            verify(f.name)
    return path


def onnx_features(path, images):
    """Run an exported model with onnxruntime on a normalised batch (tensor or array)."""
    try:
        import onnxruntime
    except ImportError:
        raise ReIDError('running the ONNX model needs onnxruntime: pip install onnxruntime') \
            from None
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    batch = images.numpy() if torch.is_tensor(images) else images
    return session.run([OUTPUT_NAME], {INPUT_NAME: batch.astype('float32')})[0]
