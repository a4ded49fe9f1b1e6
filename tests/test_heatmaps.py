"""Heat maps of what drives a match (processor.heatmaps, tools/explain.py, TEST.VISUALIZE_HEATMAP).

The maps must mean something: a tiny ViT trained on pictures whose identity lies in one
region only (the rest is noise drawn alike for every identity) puts its heat there, and an
untrained one does not. The rest checks that the maps are computed on the evaluation path
itself (the features the test scripts score), are deterministic, have each image's size, and
reach the pictures of tools/explain.py and of the test scripts.
"""
import csv
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _e2e_helpers import demo_root, small_opts, tiny_clip
from _extractor_fixtures import run_tool, save_model, write_pictures
from config import load_config
from model import make_model
from model.tiny_clip import save_tiny_clip
from processor import FeatureExtractor, cli
from processor.heatmaps import HeatMapper, mass_inside
from utils.checkpoint import save_weights
from utils.visualize import NEUTRAL, TILE, draw_rank_list

# ----- the region test -----------------------------------------------------------------------
H, W = 64, 64                 # pictures: a 4 x 4 grid of the tiny ViT's 16-pixel patches
REGION = (0, 0, 16, 32)       # top, left, bottom, right: two patches, 1/8 of the area
AREA = (REGION[2] - REGION[0]) * (REGION[3] - REGION[1]) / (H * W)
IDS, PER_ID = 8, 8
# Measured (share of the heat inside the region, mean over the 32 maps of 8 queries and
# their 3 same-identity gallery pictures; AREA 0.125), with seeds 0-3 of the model and the
# codes (this test: seed 0): untrained 0.091, 0.089, 0.149, 0.083; after 80 steps (about
# 1.5 s on one CPU thread) 0.337, 0.601, 0.392, 0.468, i.e. 2.7 to 4.8 times the region's
# share of the area. Grad-CAM's channel-averaged weights (instead of the per-token ones)
# give 0.083, 0.106, 0.172, 0.195 after training.
TRAINED_AT_LEAST = 2 * AREA
UNTRAINED_AT_MOST = 1.2 * AREA


def region_picture(code, rng):
    """Uniform noise everywhere, the identity's 4 x 8 colour code (4-pixel cells, jittered)
    in REGION."""
    pixels = rng.randint(0, 256, (H, W, 3))
    top, left, bottom, right = REGION
    cells = np.kron(code, np.ones((4, 4, 1)))
    pixels[top:bottom, left:right] = np.clip(cells + rng.randint(-20, 21, cells.shape), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(scope='module')
def region_model(tmp_path_factory):
    clip = str(save_tiny_clip(tmp_path_factory.mktemp('region') / 'clip.pt', 'vit'))
    opts = ['MODEL.PRETRAIN_PATH', clip, 'MODEL.METHOD', 'baseline', 'MODEL.DEVICE', 'cpu',
            'INPUT.SIZE_TRAIN', f'[{H}, {W}]', 'INPUT.SIZE_TEST', f'[{H}, {W}]']
    cfg = load_config('', opts)
    torch.manual_seed(0)
    model = make_model(cfg, IDS, 1, 1, object_word='object')
    codes = np.random.RandomState(0).randint(0, 256, (IDS, 4, 8, 3))
    return cfg, model, codes


def region_share(mapper, codes):
    """Mean share of the heat inside REGION over queries of each identity and 3 gallery
    pictures of the same identity."""
    rng = np.random.RandomState(1)
    shares = []
    for code in codes:
        maps = mapper(region_picture(code, rng), [region_picture(code, rng) for _ in range(3)])
        shares += [mass_inside(m, REGION) for m in maps]
    return float(np.mean(shares))


def train_region_model(cfg, model, codes, steps=80):
    """ID cross-entropy on the baseline's two classifiers, Adam, batches of 32."""
    rng = np.random.RandomState(0)
    transform = HeatMapper(model, cfg).transform
    images = torch.stack([transform(region_picture(code, rng)) for code in codes
                          for _ in range(PER_ID)])
    labels = torch.arange(IDS).repeat_interleave(PER_ID)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randperm(len(images), generator=generator)[:32]
        out = model(images[batch])
        loss = sum(F.cross_entropy(logits, labels[batch]) for logits in out['logits'])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def test_trained_heat_lies_on_the_identity_region_untrained_does_not(region_model):
    cfg, model, codes = region_model
    mapper = HeatMapper(model, cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only wait for busy cores
    try:
        untrained = region_share(mapper, codes)
        loss = train_region_model(cfg, model, codes)
        trained = region_share(mapper, codes)
    finally:
        torch.set_num_threads(threads)
    assert loss < 0.5  # it did learn the identities
    assert untrained <= UNTRAINED_AT_MOST, untrained
    assert trained >= TRAINED_AT_LEAST, (trained, AREA)


# ----- the evaluation path -------------------------------------------------------------------
def _sie_olp(clip):
    """A CLIP-ReID ViT with SIE camera embeddings and overlapping patches (stride 12)."""
    cfg = load_config('', ['MODEL.PRETRAIN_PATH', clip, 'MODEL.DEVICE', 'cpu',
                           'MODEL.METHOD', 'clipreid', 'MODEL.SIE_CAMERA', 'True',
                           'MODEL.STRIDE_SIZE', '[12, 12]', 'INPUT.SIZE_TRAIN', '[64, 32]',
                           'INPUT.SIZE_TEST', '[64, 32]'])
    torch.manual_seed(3)
    return cfg, make_model(cfg, 4, 3, 1, object_word='person').eval()


@pytest.mark.parametrize('arch, method', [('vit', 'clipreid'), ('vit', 'pcl'),
                                          ('vit', 'baseline'), ('rn', 'clipreid'), ('vit', 'sie')])
def test_maps_come_from_the_evaluation_features(tmp_path_factory, arch, method):
    """The read layer's activations, carried on through the rest of the network, give exactly
    the features the model's eval forward (the test scripts) gives; the maps have each
    image's size, are >= 0, not all zero, and the same on a second call."""
    clip = tiny_clip(tmp_path_factory, arch)
    if method == 'sie':
        cfg, model = _sie_olp(clip)
    else:
        folder = tmp_path_factory.mktemp(f'maps_{arch}_{method}')
        extractor = FeatureExtractor('', None, save_model(folder, clip, method))
        cfg, model = extractor.cfg, extractor.model
    mapper = HeatMapper(model, cfg)
    rng = np.random.RandomState(0)
    sizes = [(64, 32), (80, 40), (50, 30), (64, 32)]  # h x w
    pictures = [Image.fromarray(rng.randint(0, 256, (*s, 3), dtype=np.uint8)) for s in sizes]
    cams = np.array([0, 2, 1, 2])
    batch = torch.stack([mapper.transform(p) for p in pictures])
    with torch.no_grad():
        expected = model(batch, cam_label=torch.as_tensor(cams) if method == 'sie' else None)
        got = mapper.features(mapper.activations(batch, cams))
    assert torch.allclose(got, F.normalize(expected, dim=1), atol=1e-6)
    maps = mapper(pictures[0], pictures[1:], cams[0], cams[1:])
    assert [m.shape for m in maps] == sizes
    assert all(m.dtype == np.float32 and m.min() >= 0 for m in maps)
    assert sum(float(m.max()) > 0 for m in maps) >= 2
    again = mapper(pictures[0], pictures[1:], cams[0], cams[1:])
    assert all(np.array_equal(a, b) for a, b in zip(maps, again))


def test_sie_camera_changes_the_maps(tmp_path_factory):
    cfg, model = _sie_olp(tiny_clip(tmp_path_factory, 'vit'))
    mapper = HeatMapper(model, cfg)
    rng = np.random.RandomState(1)
    pictures = [Image.fromarray(rng.randint(0, 256, (64, 32, 3), dtype=np.uint8))
                for _ in range(3)]
    one = mapper(pictures[0], pictures[1:], 0, [0, 0])
    other = mapper(pictures[0], pictures[1:], 0, [2, 1])
    assert not np.array_equal(one[1], other[1])


def test_explain_tool_writes_pictures_and_maps(tmp_path, tmp_path_factory, capsys):
    clip = tiny_clip(tmp_path_factory, 'vit')
    opts = save_model(tmp_path, clip)
    gallery = write_pictures(tmp_path / 'gallery', 6)
    wide = str(tmp_path / 'wide.png')  # a query of another size
    pixels = np.random.RandomState(9).randint(0, 256, (40, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(wide)
    out = tmp_path / 'out'
    code, stdout, err = run_tool('explain.py', ['--config_file', '', '--query', gallery[0],
                                                wide, *opts, '--gallery',
                                                tmp_path / 'gallery', '--topk', 4,
                                                '--output', out, '--save-maps'], capsys)
    assert code in (0, None), err
    names = sorted(os.listdir(out))
    assert names == ['000_00.jpg', '000_00_maps.npz', '001_wide.jpg', '001_wide_maps.npz']
    tile_w, tile_h = TILE[0] + 8, TILE[1] + 10 + 26
    for name in ('000_00.jpg', '001_wide.jpg'):
        assert Image.open(out / name).size == (5 * tile_w + 12, tile_h)
    extractor = FeatureExtractor('', None, opts)
    mapper = HeatMapper(extractor.model, extractor.cfg)
    with np.load(out / '000_00_maps.npz') as saved:
        keys = list(saved.files)
        assert keys[0] == gallery[0] and len(keys) == 5 and gallery[0] not in keys[1:]
        for key in keys:
            with Image.open(key) as img:
                assert saved[key].shape == (img.height, img.width)
        expected = mapper(keys[0], keys[1:])
        assert all(np.array_equal(saved[k], m) for k, m in zip(keys, expected))
    with np.load(out / '001_wide_maps.npz') as saved:
        assert saved[wide].shape == (40, 70)
    # the ranking is tools/query.py's, and the picture is its rank list with the maps over it
    code, _, err = run_tool('query.py', ['--config_file', '', '--query', gallery[0], *opts,
                                         '--gallery', tmp_path / 'gallery', '--topk', 4,
                                         '--output', tmp_path / 'ranked'], capsys)
    assert code in (0, None), err
    with open(tmp_path / 'ranked' / 'ranking.csv') as f:
        rows = list(csv.DictReader(f))
    assert [row['gallery'] for row in rows] == keys[1:]
    tiles = [(row['gallery'], NEUTRAL, [f'{row["rank"]}: {float(row["distance"]):.3f}', ''])
             for row in rows]
    draw_rank_list((gallery[0], ['query', '']), tiles, str(tmp_path / 'expected.jpg'), expected)
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'expected.jpg')),
                          np.asarray(Image.open(out / '000_00.jpg')))
    plain = np.asarray(Image.open(tmp_path / 'ranked' / '000_00.jpg'), dtype=float)
    assert np.abs(plain - np.asarray(Image.open(out / '000_00.jpg'), dtype=float)).mean() > 5


def test_test_script_lays_heat_maps_over_the_rank_lists(tmp_path_factory, tmp_path, monkeypatch):
    """TEST.VISUALIZE_HEATMAP: the rank lists of test_clipreid.py carry the heat maps of
    HeatMapper for each query and its shown gallery images; without it they do not."""
    root = demo_root(tmp_path_factory, ('market1501',), ids=12)
    clip = tiny_clip(tmp_path_factory, 'vit')
    opts = small_opts(root, clip, tmp_path / 'plain', 'MODEL.METHOD', 'pcl', 'TEST.VISUALIZE', 2)
    cfg = load_config('', opts)
    torch.manual_seed(0)
    model = make_model(cfg, 6, 4, 1)
    weight = str(tmp_path / 'model.pth')
    save_weights(model, weight)
    drawn = []
    import utils.visualize as visualize
    draw = visualize.draw_rank_list
    monkeypatch.setattr(visualize, 'draw_rank_list', lambda query, gallery, path, heats=None: (
        drawn.append((query, gallery, heats)), draw(query, gallery, path, heats))[1])
    plain = cli.evaluate(load_config('', opts + ['TEST.WEIGHT', weight]))
    assert len(drawn) == 2 and all(heats is None for *_, heats in drawn)
    drawn.clear()
    heat_opts = opts + ['TEST.WEIGHT', weight, 'TEST.VISUALIZE_HEATMAP', 'True',
                        'OUTPUT_DIR', str(tmp_path / 'heat')]
    result = cli.evaluate(load_config('', heat_opts))
    assert result.mAP == plain.mAP and len(drawn) == 2
    extractor = FeatureExtractor('', weight, heat_opts)
    mapper = HeatMapper(extractor.model, extractor.cfg)
    for (query, gallery, heats), name in zip(drawn, sorted(os.listdir(tmp_path / 'heat' /
                                                                      'rank_lists'))):
        expected = mapper(query[0], [g[0] for g in gallery])
        assert len(heats) == 1 + len(gallery) == 11
        assert all(np.allclose(h, e, rtol=1e-5, atol=1e-9) for h, e in zip(heats, expected))
        with_heat = np.asarray(Image.open(tmp_path / 'heat' / 'rank_lists' / name), dtype=float)
        without = np.asarray(Image.open(tmp_path / 'plain' / 'rank_lists' / name), dtype=float)
        assert with_heat.shape == without.shape and np.abs(with_heat - without).mean() > 5
    draw_rank_list(drawn[0][0], drawn[0][1], str(tmp_path / 'again.jpg'), drawn[0][2])
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'again.jpg')),
                          np.asarray(Image.open(tmp_path / 'heat' / 'rank_lists' /
                                                sorted(os.listdir(tmp_path / 'heat' /
                                                                  'rank_lists'))[0])))


def test_a_view_embedding_model_is_warned_about(tmp_path_factory):
    import logging
    from utils.logger import get_logger
    cfg, model = _sie_olp(tiny_clip(tmp_path_factory, 'vit'))
    cfg.defrost()
    cfg.MODEL.SIE_VIEW = True
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    get_logger().addHandler(handler)
    try:
        HeatMapper(model, cfg)
    finally:
        get_logger().removeHandler(handler)
    assert any('heat maps leave the view embedding out' in r.getMessage() for r in records)
