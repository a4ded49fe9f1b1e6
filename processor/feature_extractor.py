"""FeatureExtractor: features of any images with a trained model, as the test scripts make them.

    from processor import FeatureExtractor
    extractor = FeatureExtractor('output/run/config.yaml', 'output/run/ViT-B-16_60.pth')
    feats = extractor(['a.jpg', 'b.jpg'])          # [2, D] float32, L2-normalised

It uses the evaluation path itself: the test transform of datasets.transforms (which depends
on MODEL.METHOD), the model built by make_model with the checkpoint loaded, its eval-mode
forward in float32, and TEST.FEAT_NORM; so features of a test split equal the ones
test_clipreid.py scores.

SIE models (MODEL.SIE_CAMERA / SIE_VIEW) add a camera / view embedding that needs labels:
pass `camids` / `viewids` (0-based, as the dataset lists them) to get exactly the test
scripts' features. Without them the embedding is left out (one warning): such features
compare with each other, as all images are treated alike, but differ from the test scripts'.

A picture is given as an image path, a PIL image, a numpy array H x W x C (channels last,
as PIL and OpenCV-converted-to-RGB give them) or a torch tensor C x H x W (channels first,
as torchvision's to_tensor gives them), C being 3 (RGB) or 1 (grey). Array and tensor pixels
are uint8 in 0..255, or float in 0..1, which is rounded to the nearest of the 256 levels:
the test transform works on 8-bit images, as the test scripts read them from files, so the
same picture gives the same feature in every form. Other dtypes, and float values outside
0..1 or NaN, stop with an error. A 4-D array (N x H x W x C) or tensor (N x C x H x W) is a
batch of N pictures: one feature each. Features that are not finite (a diverged model) stop
with an error naming the first pictures.
"""
import functools
import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from config import load_config
from datasets import build_transforms, init_dataset, read_image
from datasets.make_dataloader import dataset_kwargs, num_workers
from model import make_model
from model.checkpoint import checkpoint_identities, load_into, read_trained
from utils.errors import ReIDError
from utils.finite import check_finite
from utils.metrics import wants_feat_norm
from utils.runtime import wants_cuda

logger = logging.getLogger('reid')


def _is_path(image):
    return isinstance(image, (str, bytes)) or hasattr(image, '__fspath__')


def _pixels(image, name):
    """An H x W (x 1 or 3) numpy array of one picture given as an array or a tensor."""
    if torch.is_tensor(image):
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        elif image.dim() != 2:
            raise ReIDError(f'{name}: an image tensor is C x H x W with C 1 or 3 (a batch '
                            f'N x C x H x W), got shape {tuple(image.shape)}')
        return (image.float() if image.is_floating_point() else image).numpy()
    if image.ndim == 2 or image.ndim == 3 and image.shape[2] in (1, 3):
        return image
    raise ReIDError(f'{name}: an image array is H x W x C with C 1 or 3 (a batch N x H x W x C), '
                    f'got shape {image.shape}')


def _to_uint8(pixels, name):
    """uint8 pixels as they are; float pixels, which must lie in 0..1, rounded to 0..255."""
    if pixels.size == 0:
        raise ReIDError(f'{name}: the image is empty (shape {pixels.shape})')
    if pixels.dtype == np.uint8:
        return pixels
    if not np.issubdtype(pixels.dtype, np.floating):
        raise ReIDError(f'{name}: pixel values must be uint8 (0..255) or float (0..1), not '
                        f'{pixels.dtype}')
    nan = int(np.isnan(pixels).sum())
    if nan:
        raise ReIDError(f'{name}: {nan} float pixel values are NaN (they must lie in 0..1)')
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 1:
        raise ReIDError(f'{name}: float pixel values must lie in 0..1, got {low:.6g}..'
                        f'{high:.6g} (divide 0..255 values by 255, or pass them as uint8)')
    return np.round(pixels.astype(np.float64) * 255).astype(np.uint8)


def to_pil(image, name='image'):
    """An RGB PIL image from one picture in any of the forms the module docstring lists;
    `name` says which picture in error messages."""
    if _is_path(image):
        return read_image(image)
    if isinstance(image, Image.Image):
        return image.convert('RGB')
    if not (torch.is_tensor(image) or isinstance(image, np.ndarray)):
        raise ReIDError(f'{name}: cannot read an image from a {type(image).__name__}')
    pixels = _to_uint8(_pixels(image, name), name)
    return Image.fromarray(pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1
                           else pixels).convert('RGB')


class _Images(Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(to_pil(self.images[index], f'image {index}'))


def _as_list(images):
    """The pictures of a call: a list, a batch (N x C x H x W tensor, N x H x W x C array),
    or one picture."""
    if torch.is_tensor(images) and images.dim() == 4:
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


class FeatureExtractor:
    """Call it on images (paths, PIL images, arrays, tensors; one, a list or a 4-D batch; see
    the module docstring) to get a [N, D] float32 CPU tensor of features, L2-normalised
    (TEST.FEAT_NORM yes, every shipped config). `weight` '' or None takes TEST.WEIGHT of the
    config / opts; `device` None takes MODEL.DEVICE (the CPU when no GPU is present)."""

    def __init__(self, config_file, weight=None, opts=(), device=None):
        cfg, state_dict = read_trained(load_config(config_file, list(opts)), weight)
        self.cfg, self.weight = cfg, cfg.TEST.WEIGHT
        if device is None:
            device = 'cuda' if wants_cuda(cfg) and torch.cuda.is_available() else 'cpu'
        self.device = torch.device(device)
        cameras, views = self._sie_sizes(state_dict)
        self.sie_sizes = {'SIE_CAMERA': cameras, 'SIE_VIEW': views}
        model = make_model(cfg, checkpoint_identities(state_dict), cameras, views,
                           object_word='object')  # the prompt is not used for image features
        load_into(model, state_dict, self.weight)
        self.model = model.to(self.device).eval()
        self.transform = build_transforms(cfg, is_train=False)
        self.uses_sie = bool(cfg.MODEL.SIE_CAMERA or cfg.MODEL.SIE_VIEW)
        self._warned = False

    def _sie_sizes(self, state_dict):
        """(cameras, views) that size the checkpoint's SIE embedding."""
        cam, view = self.cfg.MODEL.SIE_CAMERA, self.cfg.MODEL.SIE_VIEW
        rows = state_dict['cv_embed'].shape[0] if 'cv_embed' in state_dict else 1
        if cam and view:  # rows = cameras x views; the split comes from the dataset
            views = init_dataset(self.cfg.DATASETS.NAMES, root=self.cfg.DATASETS.ROOT_DIR,
                                 **dataset_kwargs(self.cfg, training=False)).num_train_vids
            return rows // views, views
        return (rows, 1) if cam else (1, rows) if view else (1, 1)

    @property
    def normalises(self):
        """TEST.FEAT_NORM: the test scripts L2-normalise features before distances."""
        return wants_feat_norm(self.cfg.TEST.FEAT_NORM)

    @property
    def feature_dim(self):
        return self.model.in_planes + self.model.in_planes_proj

    @functools.cached_property
    def workers(self):
        return num_workers(self.cfg)

    def loader(self, images):
        """Batches of TEST.IMS_PER_BATCH; files are read by DATALOADER.NUM_WORKERS workers
        when there is more than one batch of them."""
        paths = all(isinstance(i, str) for i in images)
        batch = self.cfg.TEST.IMS_PER_BATCH
        return DataLoader(_Images(images, self.transform), batch_size=batch, shuffle=False,
                          num_workers=self.workers if paths and len(images) > batch else 0)

    def _labels(self, values, n, key):
        """The labels SIE needs as an int64 tensor, or None (not used, or not given)."""
        if not getattr(self.cfg.MODEL, key):
            return None
        if values is None:
            if not self._warned:
                logger.warning('%s uses SIE (MODEL.%s) but no labels were given: features are '
                               'computed without the SIE embedding (comparable with each other, '
                               "not with the test scripts' features)", self.weight, key)
                self._warned = True
            return None
        values = torch.as_tensor(values, dtype=torch.int64).reshape(-1)
        if len(values) != n:
            raise ReIDError(f'got {n} images but {len(values)} labels for MODEL.{key}')
        if len(values) and not 0 <= values.min() <= values.max() < self.sie_sizes[key]:
            raise ReIDError(f'MODEL.{key}: labels must be in 0..{self.sie_sizes[key] - 1} for '
                            f'{self.weight}, got {values.min().item()}..{values.max().item()}')
        return values

    @torch.no_grad()
    def __call__(self, images, camids=None, viewids=None):
        images = _as_list(images)
        cams = self._labels(camids, len(images), 'SIE_CAMERA')
        views = self._labels(viewids, len(images), 'SIE_VIEW')
        feats, start = [], 0
        for batch in self.loader(images):
            end = start + len(batch)
            cam = None if cams is None else cams[start:end].to(self.device)
            view = None if views is None else views[start:end].to(self.device)
            with torch.autocast(self.device.type, enabled=False):  # as do_inference
                feats.append(self.model(batch.to(self.device), cam_label=cam,
                                        view_label=view).float().cpu())
            start = end
        feats = torch.cat(feats) if feats else torch.zeros(0, self.feature_dim)
        check_finite(('images', feats, [str(image) if _is_path(image) else f'image {i}'
                                        for i, image in enumerate(images)]))
        return F.normalize(feats, dim=1) if self.normalises else feats
