"""Train and test transforms: CLIP-ReID's recipe and PCL-CLIP's own."""
import random

import pytest
import torch
import torchvision.transforms as T
from timm.data.random_erasing import RandomErasing

from config import load_config
from datasets.transforms import MeanErasing, build_transforms


def _cfg(method, *opts):
    return load_config('', ['MODEL.METHOD', method, 'INPUT.PIXEL_MEAN', '[0.5, 0.25, 0.125]',
                            *opts])


@pytest.mark.parametrize('method', ['clipreid', 'baseline', 'pcl'])
def test_resize_and_erasing_follow_the_method(method):
    cfg = _cfg(method)
    test, train = build_transforms(cfg, False), build_transforms(cfg, True)
    pcl = method == 'pcl'
    test_mode = T.InterpolationMode.BICUBIC if pcl else T.InterpolationMode.BILINEAR
    assert test.transforms[0].interpolation == test_mode
    assert train.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    erasing = train.transforms[-1]
    assert isinstance(erasing, MeanErasing if pcl else RandomErasing)
    if pcl:
        assert erasing.fill.flatten().tolist() == [0.5, 0.25, 0.125]


def _erased_box(img, fill):
    """(h, w) of the single box where img equals fill in every channel, or None."""
    hit = (img == fill).all(0)
    if not hit.any():
        return None
    rows, cols = hit.any(1).nonzero().flatten(), hit.any(0).nonzero().flatten()
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert hit.sum() == h * w  # one filled rectangle
    return h, w


def test_mean_erasing_draws_as_pcl_clip():
    random.seed(0)
    erase = MeanErasing(probability=1.0, mean=(0.5, 0.25, 0.125))
    fill = erase.fill
    boxes = [_erased_box(erase(torch.full((3, 200, 200), 7.0)), fill) for _ in range(1500)]
    assert all(b is not None for b in boxes)
    areas = torch.tensor([h * w / 200 ** 2 for h, w in boxes])
    aspects = torch.tensor([h / w for h, w in boxes])
    assert areas.min() >= 0.018 and areas.max() <= 0.41  # h and w are rounded
    assert aspects.min() >= 0.29 and aspects.max() <= 3.45
    # the aspect is uniform on [0.3, 3.33] (mean 1.82); a log-uniform draw (torchvision's)
    # has mean 1.26
    assert 1.7 < aspects.mean() < 1.95
    untouched = MeanErasing(probability=0.0)(torch.ones(3, 8, 8))
    assert torch.equal(untouched, torch.ones(3, 8, 8))


def test_mean_erasing_gives_up_when_no_box_fits():
    random.seed(1)
    img = torch.zeros(3, 1, 1)  # no box is strictly smaller than 1 x 1
    assert torch.equal(MeanErasing(probability=1.0)(img), torch.zeros(3, 1, 1))
