"""No plausible result from bad features or unreadable files: the tools stop with one line
(exit code 2) when a model gives features that are not finite (naming how many and the first
images), when the gallery file is damaged, missing or from another model, or when an image
cannot be opened; PCL training stops when the train features building its memory, or being
clustered, are not finite."""
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import processor.feature_extractor as feature_extractor
from _e2e_helpers import REPO
from _extractor_fixtures import poison, run_tool, save_model, tiny, write_pictures  # noqa: F401
from config import load_config
from processor.clipreid import PromptTrainer
from processor.pcl import PCLTrainer
from processor.pcl_unsup import UnsupervisedPCLTrainer
from utils.clustering import cluster_features
from utils.errors import ReIDError

NOT_FINITE = 'error: features are not finite (NaN or inf; has the model diverged?): '


@pytest.fixture
def poisoned(monkeypatch):
    """Every model the tools build gives inf features for black pictures."""
    make_model = feature_extractor.make_model
    monkeypatch.setattr(feature_extractor, 'make_model',
                        lambda *args, **kwargs: poison(make_model(*args, **kwargs)))


@pytest.fixture(scope='module')
def pictures(tiny):
    """(query paths, gallery paths) of good pictures."""
    _, folder = tiny
    return write_pictures(folder / 'query', 2), write_pictures(folder / 'gallery', 5)


def one_error(code, err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def test_extract_features_stops_on_features_that_are_not_finite(tiny, tmp_path, poisoned,
                                                                   capsys):
    opts, _ = tiny
    paths = write_pictures(tmp_path / 'images', 6, black=(1, 4))
    code, _, err = run_tool('extract_features.py', ['--images', tmp_path / 'images', '--output',
                                                    tmp_path / 'f.npz', *opts], capsys)
    assert one_error(code, err) == f'{NOT_FINITE}2 of 6 images; first: {paths[1]}, {paths[4]}'
    assert not (tmp_path / 'f.npz').exists()


@pytest.mark.parametrize('bad', ['query', 'gallery'])
def test_query_stops_on_features_that_are_not_finite(tiny, tmp_path, poisoned, capsys, bad):
    opts, _ = tiny
    query = write_pictures(tmp_path / 'query', 3, black=(2,) if bad == 'query' else ())
    gallery = write_pictures(tmp_path / 'gallery', 4, black=(0, 3) if bad == 'gallery' else ())
    code, out, err = run_tool('query.py', ['--query', tmp_path / 'query', '--gallery',
                                           tmp_path / 'gallery', *opts], capsys)
    expected = f'1 of 3 images; first: {query[2]}' if bad == 'query' else \
        f'2 of 4 images; first: {gallery[0]}, {gallery[3]}'
    assert one_error(code, err) == NOT_FINITE + expected
    assert 'rank' not in out


def test_query_names_a_gallery_file_with_features_that_are_not_finite(tiny, pictures, tmp_path,
                                                                      capsys):
    opts, _ = tiny
    features = np.ones((5, 96), np.float32)
    features[3, 7] = np.nan
    np.savez(tmp_path / 'g.npz', features=features, paths=np.array(pictures[1]))
    code, _, err = run_tool('query.py', ['--query', *pictures[0], '--gallery', tmp_path / 'g.npz',
                                         *opts], capsys)
    assert one_error(code, err) == (f'error: {tmp_path / "g.npz"}: features are not finite (NaN '
                                    f'or inf; has the model diverged?): 1 of 5 gallery; first: '
                                    f'{pictures[1][3]}')


def test_query_names_a_damaged_gallery_file(tiny, pictures, tmp_path):
    """As a user runs it: a truncated .npz of extract_features.py is one line naming it."""
    opts, _ = tiny
    np.savez(tmp_path / 'g.npz', features=np.ones((5, 96), np.float32),
             paths=np.array(pictures[1]))
    data = (tmp_path / 'g.npz').read_bytes()
    (tmp_path / 'g.npz').write_bytes(data[:len(data) // 2])
    proc = subprocess.run([sys.executable, f'{REPO}/tools/query.py', '--query', *pictures[0],
                           '--gallery', str(tmp_path / 'g.npz'), *opts], cwd=REPO, text=True,
                          capture_output=True, timeout=240)
    line = one_error(proc.returncode, proc.stderr)
    assert line.startswith(f'error: cannot read features file {tmp_path / "g.npz"} (damaged or '
                           'not an .npz of tools/extract_features.py): BadZipFile'), line


def test_query_names_a_gallery_of_another_model(tiny, pictures, tmp_path, capsys):
    opts, _ = tiny
    np.savez(tmp_path / 'g.npz', features=np.ones((5, 64), np.float32),
             paths=np.array(pictures[1]))
    code, _, err = run_tool('query.py', ['--query', *pictures[0], '--gallery', tmp_path / 'g.npz',
                                         *opts], capsys)
    line = one_error(code, err)
    assert line.startswith(f'error: {tmp_path / "g.npz"} holds features of size 64; the model ')
    assert line.endswith('makes features of size 96: the gallery comes from another model')


def test_query_names_every_unreadable_input(tiny, pictures, tmp_path, capsys):
    """One line naming the file: a --gallery that does not exist (.npz or folder), images that
    cannot be opened (query or gallery), a gallery file that is not an .npz of features, a
    list file that is not text."""
    opts, _ = tiny
    query, gallery = pictures
    broken, binary = str(tmp_path / 'broken.png'), str(tmp_path / 'binary.txt')
    open(broken, 'wb').write(open(gallery[0], 'rb').read()[:60])
    open(binary, 'wb').write(bytes(range(256)))
    listed = str(tmp_path / 'list.txt')
    open(listed, 'w').write(f'{gallery[1]}\n{broken}\n')
    png_npz = str(tmp_path / 'picture.npz')
    open(png_npz, 'wb').write(open(gallery[0], 'rb').read())
    nowhere = str(tmp_path / 'nowhere')
    cases = [  # (--query, --gallery, start of the line)
        (query, nowhere + '.npz', f'error: cannot read features file {nowhere}.npz: '),
        (query, nowhere, f'error: {nowhere}: no such folder or file'),
        ([query[0], broken], gallery[0], f'error: cannot read image {broken}: '),
        (query, listed, f'error: cannot read image {broken}: '),
        (query, png_npz, f'error: cannot read features file {png_npz} (damaged or not an .npz '),
        (query, binary, f'error: {binary} is not a text list file: '),
        ([binary], gallery[0], f'error: {binary} is not a text list file: '),
    ]
    for q, g, expected in cases:
        code, _, err = run_tool('query.py', ['--query', *q, '--gallery', g, *opts], capsys)
        assert one_error(code, err).startswith(expected), (q, g, err)


def test_extract_features_names_an_unreadable_input(tiny, tmp_path, capsys):
    opts, _ = tiny
    folder = tmp_path / 'images'
    paths = write_pictures(folder, 3)
    open(paths[1], 'wb').write(b'not a picture')
    binary = tmp_path / 'binary.txt'
    binary.write_bytes(bytes(range(256)))
    for source, expected in ((folder, f'error: cannot read image {paths[1]}: '),
                             (binary, f'error: {binary} is not a text list file: ')):
        code, _, err = run_tool('extract_features.py', ['--images', source, '--output',
                                                        tmp_path / 'f.npz', *opts], capsys)
        assert one_error(code, err).startswith(expected), err
    assert not (tmp_path / 'f.npz').exists()


# ----- training ------------------------------------------------------------------------------
class Net(nn.Module):
    """memory_features: the images' first pixel values, inf for the images whose first pixel
    is negative."""

    def memory_features(self, x):
        feats = x[:, 0, 0, :4].clone()
        feats[x[:, 0, 0, 0] < 0] = float('inf')
        return feats

    encode_image = memory_features  # what CLIP-ReID's stage-1 cache reads


def trainer(kind, bad_rows, n=10):
    """A PCL trainer (kind) with just what building its memory reads: a training set of n
    images whose rows in bad_rows give inf features."""
    images = torch.rand(n, 3, 2, 4)
    images[bad_rows, 0, 0, 0] = -1
    batches = [(images[i:i + 4], torch.arange(i, min(i + 4, n)), torch.zeros(4, dtype=torch.long),
                torch.zeros(4, dtype=torch.long)) for i in range(0, n, 4)]
    t = kind.__new__(kind)
    t.cfg = load_config('', ['MODEL.METHOD', 'pcl'])
    t.model = Net()
    t.runtime = SimpleNamespace(device=torch.device('cpu'), amp_dtype=None)
    records = [(f'train/{i:02d}.jpg', i, 0, 0) for i in range(n)]
    t.data = SimpleNamespace(train_eval_loader=batches, num_classes=n,
                             dataset=SimpleNamespace(train=records))
    t.labels = t.image_feats = None
    return t


@pytest.mark.parametrize('kind', [PCLTrainer, UnsupervisedPCLTrainer, PromptTrainer])
def test_training_stops_when_the_train_features_are_not_finite(kind):
    with pytest.raises(ReIDError, match=r'^features are not finite \(NaN or inf; has the model '
                       r'diverged\?\): 3 of 10 train; first: train/02.jpg, train/05.jpg, '
                       r'train/09.jpg$'):
        trainer(kind, [2, 5, 9]).prepare_epoch(1)
    if kind is PromptTrainer:
        return
    feats, pids = trainer(kind, []).train_features()
    assert torch.isfinite(feats).all() and pids.tolist() == list(range(10))


def test_clustering_refuses_features_that_are_not_finite():
    feats = torch.randn(20, 8)
    feats[[4, 11], 2] = float('nan')
    with pytest.raises(ReIDError, match=r': 2 of 20 train; first: train row 4, train row 11$'):
        cluster_features(feats, k1=5, k2=2, min_samples=2)
    paths = [f'img{i}.jpg' for i in range(20)]
    with pytest.raises(ReIDError, match=r': 2 of 20 train; first: img4.jpg, img11.jpg$'):
        cluster_features(feats.numpy(), k1=5, k2=2, min_samples=2, paths=paths)
