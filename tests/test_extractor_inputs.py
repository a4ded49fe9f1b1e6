"""processor.FeatureExtractor: one feature per picture, whatever form the picture comes in
(path, PIL image, uint8 or 0..1 float array H x W x C, tensor C x H x W, batches of either);
pixel values outside the documented range and features that are not finite stop with one
ReIDError naming the picture."""
import numpy as np
import pytest
import torch
from PIL import Image

from _extractor_fixtures import picture, poison, tiny, write_pictures  # noqa: F401
from processor import FeatureExtractor
from utils.errors import ReIDError


@pytest.fixture(scope='module')
def extractor(tiny):
    opts, _ = tiny
    return FeatureExtractor('', None, opts)


def forms(pixels):
    """One picture (H x W x 3 uint8) in every form the extractor takes but a path."""
    chw = torch.from_numpy(pixels).permute(2, 0, 1)
    return {'pil': Image.fromarray(pixels), 'uint8 array': pixels,
            'float64 array': pixels / 255.0, 'float32 array': pixels.astype(np.float32) / 255,
            'float16 array': (pixels / 255.0).astype(np.float16),
            'uint8 tensor': chw, 'float32 tensor': chw.float() / 255,
            'float64 tensor': chw.double() / 255,
            'bfloat16 tensor': chw.bfloat16() / 255}  # 8 significant bits: still exact


def test_every_form_of_a_picture_gives_the_same_feature(extractor, tmp_path):
    pixels = [picture(seed) for seed in range(3)]
    paths = write_pictures(tmp_path, 3)  # the same pictures, as PNG files
    expected = extractor(paths)
    assert expected.shape == (3, extractor.feature_dim)
    for name in forms(pixels[0]):
        given = [forms(p)[name] for p in pixels]
        assert torch.equal(extractor(given), expected), name  # every conversion is exact
        assert torch.equal(extractor(given[1]), expected[1:2]), name  # one picture alone
    batch = np.stack(pixels)
    assert torch.equal(extractor(batch), expected)  # N x H x W x C array: N pictures
    assert torch.equal(extractor(batch / 255.0), expected)
    tensors = torch.from_numpy(batch).permute(0, 3, 1, 2)  # N x C x H x W
    assert torch.equal(extractor(tensors), expected)
    assert torch.equal(extractor(tensors.float() / 255), expected)


def test_grey_pictures_in_every_form(extractor):
    grey = picture(4)[:, :, 0]
    expected = extractor(Image.fromarray(grey))
    for given in (grey, grey[:, :, None], grey / 255.0, torch.from_numpy(grey)[None] / 255.0,
                  torch.from_numpy(grey), torch.from_numpy(grey)[None]):
        assert torch.equal(extractor(given), expected)


def test_float_pixels_between_the_levels_round_to_the_nearest(extractor):
    """Arrays and tensors alike: float pixels become the nearest of the 256 levels, as an
    8-bit file of the same picture would hold them."""
    values = np.random.RandomState(5).rand(*picture(0).shape)
    levels = np.round(values * 255).astype(np.uint8)
    expected = extractor(levels)
    chw = torch.from_numpy(values).permute(2, 0, 1)
    for given in (values, values.astype(np.float32), chw, chw.float()):
        assert torch.equal(extractor(given), expected)


BAD = {
    'float array above 1': (lambda p: p / 200.0, r'image 1: float pixel values must lie in '
                            r'0\.\.1, got 0\.\.1\.275'),
    'float array below 0': (lambda p: p / 255.0 - 0.5, 'image 1: float pixel values must lie '
                            r'in 0\.\.1, got -0\.5\.\.0\.5'),
    'float tensor above 1': (lambda p: torch.from_numpy(p).permute(2, 0, 1).float(),
                             r'image 1: float pixel values must lie in 0\.\.1, got 0\.\.255 '
                             r'\(divide 0\.\.255 values by 255, or pass them as uint8\)'),
    'float tensor below 0': (lambda p: torch.from_numpy(p / 255.0 - 1).permute(2, 0, 1),
                             r'image 1: float pixel values must lie in 0\.\.1, got -1\.\.0'),
    'NaN array': (lambda p: np.where(p > 250, np.nan, p / 255.0),
                  r'image 1: \d+ float pixel values are NaN'),
    'NaN tensor': (lambda p: torch.from_numpy(np.where(p > 250, np.nan, p / 255.0)).permute(
        2, 0, 1), r'image 1: \d+ float pixel values are NaN'),
    'inf array': (lambda p: np.where(p > 250, np.inf, p / 255.0), r'got 0\.\.inf'),
    'int64 array': (lambda p: p.astype(np.int64), 'image 1: pixel values must be uint8 '
                    r'\(0\.\.255\) or float \(0\.\.1\), not int64'),
    'channels-last tensor': (lambda p: torch.from_numpy(p), r'image 1: an image tensor is C x '
                             r'H x W with C 1 or 3 .*got shape \(64, 32, 3\)'),
    'channels-first array': (lambda p: p.transpose(2, 0, 1), r'image 1: an image array is H x '
                             r'W x C with C 1 or 3 .*got shape \(3, 64, 32\)'),
}


@pytest.mark.parametrize('name', BAD)
def test_pixels_outside_the_documented_range_stop(extractor, name):
    make, message = BAD[name]
    with pytest.raises(ReIDError, match=message):
        extractor([picture(0), make(picture(1))])


def test_features_that_are_not_finite_name_the_pictures(tiny, tmp_path):
    opts, _ = tiny
    extractor = FeatureExtractor('', None, opts)
    paths = write_pictures(tmp_path, 6, black=(1, 4))
    poison(extractor.model, float('nan'))
    with pytest.raises(ReIDError, match=r'^features are not finite \(NaN or inf; has the model '
                       rf'diverged\?\): 2 of 6 images; first: {paths[1]}, {paths[4]}$'):
        extractor(paths)
    poison(extractor.model, float('inf'))
    given = [picture(0), picture(0, black=True), paths[1], Image.fromarray(picture(2))]
    with pytest.raises(ReIDError, match=rf': 2 of 4 images; first: image 1, {paths[1]}$'):
        extractor(given)
    assert torch.isfinite(extractor(paths[2:4])).all()  # the other pictures are fine
