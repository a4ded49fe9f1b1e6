"""A tiny trained-model setup for FeatureExtractor and the tools (no dataset needed), pictures
written to disk, and a model that gives non-finite features for some pictures."""
import os
import runpy
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from _e2e_helpers import REPO
from config import load_config
from model import make_model
from model.tiny_clip import save_tiny_clip
from utils.checkpoint import save_weights

SIZE = (64, 32)  # pictures on disk, h x w


def model_opts(clip, weight='', method='clipreid', size=(48, 32)):
    opts = ['MODEL.PRETRAIN_PATH', clip, 'MODEL.METHOD', method, 'MODEL.DEVICE', 'cpu',
            'INPUT.SIZE_TRAIN', str(list(size)), 'INPUT.SIZE_TEST', str(list(size)),
            'TEST.IMS_PER_BATCH', 4, 'DATALOADER.NUM_WORKERS', 0]
    return [str(o) for o in opts + (['TEST.WEIGHT', weight] if weight else [])]


def save_model(folder, clip, method='clipreid', size=(48, 32), seed=0):
    """KEY VALUE options of a model saved in folder (TEST.WEIGHT included)."""
    torch.manual_seed(seed)
    model = make_model(load_config('', model_opts(clip, method=method, size=size)), 5, 1, 1,
                       object_word='person')
    weight = str(folder / f'{method}_{"x".join(map(str, size))}.pth')
    save_weights(model, weight)
    return model_opts(clip, weight, method, size)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """(options of a saved CLIP-ReID model, folder for more files)."""
    folder = tmp_path_factory.mktemp('tiny_model')
    return save_model(folder, str(save_tiny_clip(folder / 'clip.pt', 'vit'))), folder


def picture(seed, black=False):
    """An H x W x 3 uint8 picture (all zeros when black)."""
    if black:
        return np.zeros((*SIZE, 3), dtype=np.uint8)
    return np.random.RandomState(seed).randint(0, 256, (*SIZE, 3), dtype=np.uint8)


def write_pictures(folder, n, black=()):
    """n PNG files in folder (created), those numbered in `black` all black; their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(os.path.join(folder, f'{i:02d}.png'))
        Image.fromarray(picture(i, i in black)).save(paths[-1])
    return paths


def poison(model, value=float('inf')):
    """Make the model's features `value` for black pictures (every normalised pixel of a black
    picture is below -1.4; of any other, some are above)."""
    forward = model.forward

    def bad(x, *args, **kwargs):
        out = forward(x, *args, **kwargs)
        black = x.flatten(1).amax(1) < -1.4
        return torch.where(black[:, None], torch.full_like(out, value), out)
    model.forward = bad
    return model


def run_tool(script, args, capsys):
    """Run tools/<script> in this process as a user would; (exit code, stdout, stderr)."""
    argv, saved = [os.path.join(REPO, 'tools', script), *map(str, args)], sys.argv
    code = 0
    try:
        sys.argv = argv
        runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as done:
        code = done.code
    finally:
        sys.argv = saved
    out = capsys.readouterr()
    return code, out.out, out.err
