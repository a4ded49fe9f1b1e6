"""processor.gallery.search: the k nearest gallery features by torch.topk on each distance
chunk, against a brute-force stable argsort of the whole distance matrix (ties included);
load_gallery on damaged files."""
import numpy as np
import pytest
import torch

import processor.gallery as gallery_module
from processor.gallery import load_gallery, search
from utils.distance import distance_chunks
from utils.errors import ReIDError


def reference(query, gallery, metric, k, exclude=None):
    """Stable argsort of the whole distance matrix (evaluation's distances and tie order)."""
    dist = torch.cat([c for _, _, c in distance_chunks(torch.as_tensor(query),
                                                       torch.as_tensor(gallery), metric)])
    if exclude is not None:
        dist[torch.as_tensor(exclude[0]), torch.as_tensor(exclude[1])] = float('inf')
    order = np.argsort(dist.numpy(), axis=1, kind='stable')[:, :k]
    return order, np.take_along_axis(dist.numpy(), order, axis=1)


def tied(n_query=1100, n_gallery=40, seed=0):
    """Small-integer features with repeated gallery rows: many exactly equal distances (some
    of them at the k-th place), and more queries than one chunk of 1024 rows."""
    gen = np.random.RandomState(seed)
    gallery = gen.randint(-2, 3, (n_gallery, 6)).astype(np.float32)
    half = n_gallery // 2
    gallery[half:half + 10] = gallery[:min(10, n_gallery - half)]
    return gen.randint(-2, 3, (n_query, 6)).astype(np.float32), gallery


@pytest.fixture
def no_sort(monkeypatch):
    """A search that sorts the whole matrix fails: only topk is allowed."""
    def refuse(*args, **kwargs):
        raise AssertionError('search must not sort whole rows')
    for name in ('argsort', 'sort'):
        monkeypatch.setattr(torch, name, refuse)
        monkeypatch.setattr(torch.Tensor, name, refuse)


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
@pytest.mark.parametrize('k', [1, 7, 40, 100])
def test_topk_equals_a_stable_full_sort_with_ties(metric, k, no_sort):
    query, gallery = tied()
    order, dist = search(query, gallery, metric, topk=k)
    ref_order, ref_dist = reference(query, gallery, metric, k)
    full = reference(query, gallery, metric, len(gallery))[1]
    assert (full[:, 1:] == full[:, :-1]).sum() > 1000  # the data do test tie order
    if k < len(gallery):  # ties that straddle the k-th place
        assert (full[:, k - 1] == full[:, k]).sum() > 50
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_array_equal(dist, ref_dist)


def test_random_features_and_excluded_pairs(no_sort):
    gen = np.random.RandomState(1)
    query, gallery = gen.randn(1100, 8).astype(np.float32), gen.randn(60, 8).astype(np.float32)
    gallery[7] = query[3]  # the query itself: its distance may round below 0
    exclude = (np.array([3, 3, 1099, 0]), np.array([7, 8, 59, 0]))
    order, dist = search(query, gallery, 'euclidean', topk=60, exclude=exclude)
    ref_order, ref_dist = reference(query, gallery, 'euclidean', 60, exclude)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_array_equal(dist, ref_dist)
    assert order[3, -2:].tolist() == [7, 8] and np.isinf(dist[3, -2:]).all()  # last, in order


def test_rows_per_chunk_is_one_parameter(monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get('rows'))
        return distance_chunks(*args, **kwargs)
    monkeypatch.setattr(gallery_module, 'distance_chunks', spy)
    query, gallery = tied()
    whole = search(query, gallery, topk=5)
    chunked = search(query, gallery, topk=5, rows=1024)  # two chunks
    assert seen == [None, 1024]
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)


def test_empty_sets_and_bad_k():
    query, gallery = tied(3, 4)
    assert search(query[:0], gallery, topk=2)[0].shape == (0, 2)
    assert search(query, gallery, topk=9)[0].shape == (3, 4)  # k is at most G
    with pytest.raises(ReIDError, match='at least 1, not 0'):
        search(query, gallery, topk=0)


def test_features_that_are_not_finite_are_refused():
    query, gallery = tied(5, 6)
    query[2, 1], gallery[4, 0] = np.nan, -np.inf
    with pytest.raises(ReIDError, match=r'not finite .*: 1 of 5 query, 1 of 6 gallery; first: '
                                        r'query row 2, gallery row 4$'):
        search(query, gallery)


def write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_damaged_files_are_named(tmp_path):
    good = write(tmp_path / 'g.npz', features=np.ones((4, 3), np.float32),
                 paths=np.array(list('abcd')))
    data = open(good, 'rb').read()
    cases = {'truncated.npz': data[:len(data) // 2], 'empty.npz': b'',
             'scribbled.npz': data[:60] + b'x' * 80 + data[140:]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ReIDError, match=f'^cannot read features file {tmp_path / name}'):
            load_gallery(str(tmp_path / name))
    with pytest.raises(ReIDError, match=f'^cannot read features file {tmp_path}/none.npz: '):
        load_gallery(str(tmp_path / 'none.npz'))
    np.save(tmp_path / 'array.npy', np.ones(3))
    with pytest.raises(ReIDError, match='array.npy'):
        load_gallery(str(tmp_path / 'array.npy'))
    odd = write(tmp_path / 'odd.npz', features=np.ones(4, np.float32), paths=np.array(list('ab')))
    with pytest.raises(ReIDError, match=f'^{odd} is damaged: features float32 \\(4,\\) for '):
        load_gallery(odd)
    odd = write(tmp_path / 'odd.npz', features=np.ones((2, 3), np.float32),
                paths=np.array(list('ab')), pids=np.arange(3))
    with pytest.raises(ReIDError, match='is damaged'):
        load_gallery(odd)


def test_a_gallery_with_features_that_are_not_finite_is_named(tmp_path):
    features = np.ones((4, 3), np.float32)
    features[2, 0] = np.nan
    path = write(tmp_path / 'g.npz', features=features, paths=np.array(list('abcd')))
    with pytest.raises(ReIDError, match=f'^{path}: features are not finite .*: 1 of 4 gallery; '
                                        'first: c$'):
        load_gallery(path)


def test_a_memory_budget_shrinks_the_chunks_not_the_result(monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append((kwargs.get('rows'), kwargs.get('block')))
        return distance_chunks(*args, **kwargs)
    monkeypatch.setattr(gallery_module, 'distance_chunks', spy)
    query, gallery = tied(300, 2000)
    whole = search(query, gallery, topk=7)
    # 2,000 gallery images: 20 bytes a distance and key, so 1 MiB holds 26 query rows
    budgeted = search(query, gallery, topk=7, memory_budget=(1 << 20) + 2 * 300 * 7 * 8)
    assert seen == [(None, 1024), (26, 26)]
    for a, b in zip(whole, budgeted):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ReIDError, match='TEST.MEMORY_BUDGET'):
        search(query, gallery, topk=7, memory_budget=1000)
