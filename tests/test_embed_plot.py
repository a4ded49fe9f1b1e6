"""tools/embed_plot.py: a 2-D map of the features of some identities. The CSV beside the PNG
holds the points drawn: the chosen identities' images with their labels and cameras, at the
coordinates utils.embedding.embed_2d gives those features."""
import numpy as np
import pytest
import torch
from PIL import Image

from _e2e_helpers import demo_root, small_opts, tiny_clip
from _extractor_fixtures import run_tool
from config import load_config
from model import make_model
from utils.checkpoint import save_weights
from utils.clustering import cluster_features
from utils.embedding import embed_2d, pick_labels, read_embedding_csv, umap_available


@pytest.fixture
def npz(tmp_path):
    """Features of 8 identities x 6 images in 3 cameras, and 4 junk images (identity -1)."""
    rng = np.random.default_rng(0)
    pids = np.concatenate([np.repeat(np.arange(8), 6), [-1] * 4])
    centres = rng.standard_normal((9, 24))
    feats = centres[pids] + 0.3 * rng.standard_normal((len(pids), 24))
    camids = np.arange(len(pids)) % 3
    paths = np.array([f'/data/{i:03d}.jpg' for i in range(len(pids))])
    path = tmp_path / 'feats.npz'
    np.savez(path, features=feats.astype(np.float32), paths=paths, pids=pids, camids=camids)
    return path, feats.astype(np.float32), pids, camids, paths


def png_size(path):
    with Image.open(path) as img:
        assert img.format == 'PNG'
        return img.size


def test_identities_cameras_and_coordinates_are_the_ones_drawn(npz, tmp_path, capsys):
    path, feats, pids, camids, paths = npz
    out = tmp_path / 'map.png'
    code, _, err = run_tool('embed_plot.py', ['--features', path, '--ids', 5, '--method', 'tsne',
                                              '--output', out], capsys)
    assert code in (0, None), err
    assert png_size(out) == (750, 600)
    rows = read_embedding_csv(tmp_path / 'map.csv')
    chosen = pick_labels(pids, 5, 0)
    assert len(rows) == 30 and [r['path'] for r in rows] == list(paths[chosen])
    assert len({r['identity'] for r in rows}) == 5 and all(int(r['identity']) >= 0 for r in rows)
    assert [int(r['identity']) for r in rows] == list(pids[chosen])
    assert [int(r['camid']) for r in rows] == list(camids[chosen])
    coords, method = embed_2d(feats[chosen], 'tsne', 0)
    assert method == 'tsne'
    assert np.array_equal([[float(r['x']), float(r['y'])] for r in rows], coords)


def test_another_seed_draws_other_identities(npz):
    _, _, pids, _, _ = npz
    assert not np.array_equal(pick_labels(pids, 3, 0), pick_labels(pids, 3, 1))
    assert np.array_equal(pick_labels(pids, 99, 0), np.flatnonzero(pids >= 0))


def test_auto_is_tsne_without_umap_and_umap_asks_for_it(npz, tmp_path, capsys):
    path = npz[0]
    if umap_available():
        pytest.skip('umap-learn is installed here')
    code, out, err = run_tool('embed_plot.py', ['--features', path, '--output',
                                                tmp_path / 'a.png'], capsys)
    assert code in (0, None) and 'tsne map of 48 images' in out + err
    code, _, err = run_tool('embed_plot.py', ['--features', path, '--method', 'umap',
                                              '--output', tmp_path / 'u.png'], capsys)
    assert code == 2 and 'pip install umap-learn' in err


def test_colour_by_clusters_of_the_run_settings(npz, tmp_path, capsys):
    path, feats, _, _, paths = npz
    settings = ['CLUSTER.K1', '8', 'CLUSTER.K2', '2', 'CLUSTER.EPS', '0.5',
                'CLUSTER.MIN_SAMPLES', '3']
    code, _, err = run_tool('embed_plot.py', ['--config_file', '', '--features', path,
                                              '--color-by', 'cluster', '--ids', 3,
                                              '--method', 'tsne', '--output', tmp_path / 'c.png',
                                              *settings], capsys)
    assert code in (0, None), err
    labels = cluster_features(feats, 8, 2, 0.5, 3)
    chosen = pick_labels(labels, 3, 0)
    rows = read_embedding_csv(tmp_path / 'c.csv')
    assert [r['path'] for r in rows] == list(paths[chosen])
    assert [int(r['cluster']) for r in rows] == list(labels[chosen])


def test_bad_requests_stop_with_one_line(npz, tmp_path, capsys):
    path = npz[0]
    np.savez(tmp_path / 'nolabels.npz', features=np.zeros((4, 3), np.float32),
             paths=np.array(list('abcd')))
    for args, message in (
            (['--features', tmp_path / 'nolabels.npz'], 'holds no identities'),
            (['--features', path, '--color-by', 'pseudo'], 'needs --split train'),
            (['--features', path, '--ids', 0], '--ids must be at least 1')):
        code, _, err = run_tool('embed_plot.py', [*args, '--output', tmp_path / 'x.png'], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_split_coloured_by_the_saved_pseudo_labels(tmp_path_factory, tmp_path, capsys):
    root = demo_root(tmp_path_factory, ('market1501',), ids=12)
    opts = small_opts(root, tiny_clip(tmp_path_factory, 'vit'), tmp_path, 'MODEL.METHOD', 'pcl',
                      'MODEL.NAME', 'tiny')
    torch.manual_seed(0)
    weight = str(tmp_path / 'tiny_2.pth')
    save_weights(make_model(load_config('', opts), 6, 4, 1), weight)
    # 6 training identities x 12 images in the generated data; pseudo-labels as a run saves them
    pseudo = torch.tensor(np.arange(72) % 5 - 1)
    torch.save({'model': {}, 'epoch': 2, 'extra': {'pseudo_labels': pseudo}},
               tmp_path / 'tiny_pcl_unsup_state.pth')
    code, _, err = run_tool('embed_plot.py', ['--config_file', '', '--split', 'train',
                                              '--color-by', 'pseudo', '--ids', 3, '--method',
                                              'tsne', '--output', tmp_path / 'p.png', *opts,
                                              'TEST.WEIGHT', weight], capsys)
    assert code in (0, None), err
    rows = read_embedding_csv(tmp_path / 'p.csv')
    chosen = pick_labels(pseudo.numpy(), 3, 0)
    assert [int(r['pseudo-label']) for r in rows] == list(pseudo.numpy()[chosen])
    assert len(rows) == len(chosen) and png_size(tmp_path / 'p.png')
    torch.save({'model': {}, 'epoch': 2, 'extra': {'pseudo_labels': pseudo[:10]}},
               tmp_path / 'short.pth')
    code, _, err = run_tool('embed_plot.py', ['--config_file', '', '--split', 'train',
                                              '--color-by', 'pseudo', '--state',
                                              tmp_path / 'short.pth', '--output',
                                              tmp_path / 'q.png', *opts, 'TEST.WEIGHT', weight],
                            capsys)
    assert code == 2 and 'pseudo-labels of 10 training images' in err
