"""Shared helpers for the model tests: tiny random CLIP files and configs that point at them."""
import pytest
import torch

from config import load_config
from model import make_model
from model.tiny_clip import save_tiny_clip

SIZE = (128, 64)  # training input [h, w] of the tests


@pytest.fixture(scope='session')
def tiny_clip_files(tmp_path_factory):
    """{(arch, fmt): path} for arch in vit/rn and both OpenAI formats, seed 0."""
    folder = tmp_path_factory.mktemp('tiny_clip')
    return {(arch, fmt): str(save_tiny_clip(folder / f'{arch}_{fmt}.pt', arch, fmt))
            for arch in ('vit', 'rn') for fmt in ('state_dict', 'torchscript')}


def make_cfg(clip_path, *opts, size=SIZE):
    return load_config('', ['MODEL.PRETRAIN_PATH', clip_path,
                            'INPUT.SIZE_TRAIN', str(list(size)), 'INPUT.SIZE_TEST', str(list(size)),
                            *map(str, opts)])


def build(clip_path, method='clipreid', num_class=5, cams=3, views=2, *opts, seed=0,
          size=SIZE):
    """A model of `method` on the tiny CLIP at clip_path; heads initialised from `seed`."""
    torch.manual_seed(seed)
    cfg = make_cfg(clip_path, 'MODEL.METHOD', method, *opts, size=size)
    return make_model(cfg, num_class, cams, views, object_word='person')


def images(n=4, size=SIZE, seed=1):
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))
