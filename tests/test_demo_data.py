"""The demo data generator: sizes, determinism, skipping, CLI and learnable identities."""
import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from _data_fixtures import demo  # noqa: F401 (fixture)
from datasets import init_dataset
from datasets.demo_data import generate, main
from utils.errors import ReIDError


def tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def test_default_market_sizes(tmp_path):
    counts = generate(str(tmp_path))['market1501']
    # 24 ids: 12 train x 4 cameras x 3 images; 12 test ids, a query from cameras 1 and 2
    assert counts['train'] == {'ids': 12, 'images': 144, 'cams': 4}
    assert counts['query'] == {'ids': 12, 'images': 24, 'cams': 2}
    assert counts['gallery'] == {'ids': 12, 'images': 120, 'cams': 4}
    folder = tmp_path / 'Market-1501-v15.09.15'
    assert len(os.listdir(folder / 'bounding_box_test')) == 120 + 3 + 4  # + junk + distractors
    with Image.open(next((folder / 'query').iterdir())) as img:
        assert img.size == (64, 128) and img.mode == 'RGB'
    assert not any('.partial' in p for p in tree(tmp_path))  # written atomically


def test_same_seed_same_bytes_other_seed_other_pictures(tmp_path):
    opts = dict(layouts=('custom', 'veri'), ids=4, cameras=2, per_camera=1, seed=9)
    generate(str(tmp_path / 'a'), **opts)
    generate(str(tmp_path / 'b'), **opts)
    generate(str(tmp_path / 'c'), **dict(opts, seed=10))
    files = tree(tmp_path / 'a')
    assert files == tree(tmp_path / 'b') and len(files) == 8 * 2 + 3 + 2
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', files, shallow=False)
    assert mismatch == [] and errors == []
    images = [f for f in files if f.endswith('.jpg')]
    _, differ, _ = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'c', images, shallow=False)
    assert len(differ) == len(images)


def test_existing_layouts_are_skipped(tmp_path):
    first = generate(str(tmp_path), layouts=('custom',), ids=2, cameras=2, per_camera=1)
    stamp = os.path.getmtime(tmp_path / 'custom' / 'train.txt')
    again = generate(str(tmp_path), layouts=('custom', 'msmt17'), ids=2, cameras=2, per_camera=1)
    assert first['custom']['train'] == {'ids': 1, 'images': 2, 'cams': 2}
    assert again['custom'] is None and again['msmt17']['train']['images'] == 2
    assert os.path.getmtime(tmp_path / 'custom' / 'train.txt') == stamp


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ReIDError, match='unknown demo layout'):
        generate(str(tmp_path), layouts=('cuhk03',))
    with pytest.raises(ReIDError, match='at least 2 identities, 2 cameras'):
        generate(str(tmp_path), ids=1)
    assert not os.path.exists(tmp_path / 'Market-1501-v15.09.15')


def test_cli(tmp_path, capsys):
    main(['--root', str(tmp_path), '--layouts', 'vehicleid', '--ids', '6', '--seed', '2',
          '--cameras', '2', '--per-camera', '1', '--size', '32', '48'])
    out = capsys.readouterr().out
    assert out.startswith("vehicleid: {'train': {'ids': 3, 'images': 6, 'cams': 1}")
    with Image.open(tmp_path / 'VehicleID_V1.0' / 'image' / '0000000.jpg') as img:
        assert img.size == (48, 32)
    with pytest.raises(SystemExit) as exit_info:
        main(['--root', str(tmp_path), '--layouts', 'nope'])
    assert exit_info.value.code == 2 and 'unknown demo layout' in capsys.readouterr().err


def test_atrw_annotation_matches_the_tiger_test_list(demo):
    root, counts = demo
    with open(f'{root}/animals/datalist/tiger_gt_test_plain.json') as f:
        annotation = json.load(f)
    with open(f'{root}/animals/datalist/tiger_test.txt') as f:
        listed = [line.split() for line in f.read().splitlines()]
    assert len(annotation) == len(listed) == counts['animals']['tiger']['query']['images'] == 18
    for entry, (name, label) in zip(annotation, listed):
        assert f"{entry['imgid']:06d}.jpg" == name and entry['entityid'] == int(label)
        assert len(entry['frame']) == 3 and entry['query'] in ('sing', 'multi', '')
    # the query shots: 3 test identities x (camera 1 'sing', camera 2 'multi')
    assert sorted(e['query'] for e in annotation if e['query']) == ['multi'] * 3 + ['sing'] * 3


def colour_histogram(path):
    with Image.open(path) as img:
        pixels = np.asarray(img.convert('RGB'))[20:120, 8:56] // 64
    hist = np.bincount((pixels[..., 0] * 16 + pixels[..., 1] * 4 + pixels[..., 2]).ravel(),
                       minlength=64).astype(float)
    return hist / np.linalg.norm(hist)


def test_identities_are_distinct_across_cameras(tmp_path):
    """Even a colour histogram finds the identity of most queries in other cameras, far above
    chance (1/12): the appearance is stable per identity and differs between identities."""
    generate(str(tmp_path), ids=24, seed=0)
    ds = init_dataset('market1501', root=str(tmp_path), verbose=False)
    gallery = [r for r in ds.gallery if r[1] > 0]
    sims = (np.stack([colour_histogram(r[0]) for r in ds.query])
            @ np.stack([colour_histogram(r[0]) for r in gallery]).T)
    hits = 0
    for q, row in zip(ds.query, sims):
        ranked = [g for g in np.argsort(-row) if (gallery[g][1], gallery[g][2]) != q[1:3]]
        hits += gallery[ranked[0]][1] == q[1]
    assert hits / len(ds.query) >= 0.5
