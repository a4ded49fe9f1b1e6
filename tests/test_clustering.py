"""Clustering for unsupervised training: the sparse Jaccard neighbourhoods and DBSCAN on them
against scikit-learn's DBSCAN on the dense Jaccard matrix, camera proxies, the log figures,
and refused CLUSTER values."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from config import load_config
from processor.pcl_unsup import check_cluster_config
from utils.clustering import (camera_proxies, cluster_features, clustering_summary,
                              jaccard_neighbours, size_histogram)
from utils.errors import ReIDError
from _rerank_reference import reference_re_ranking
from utils.reranking import re_ranking


def features(n=150, ids=15, dim=32, noise=0.25, seed=0):
    """Noisy copies of `ids` random centres; images 5 and 6 are exact duplicates (Jaccard
    distance 0 between two different images: an explicit zero of the sparse matrix)."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(ids, dim, generator=gen), dim=1)
    truth = torch.randint(0, ids, (n,), generator=gen)
    feats = centres[truth] + noise * torch.randn(n, dim, generator=gen)
    feats[6] = feats[5]
    return feats, truth.numpy()


def dense_jaccard(feats, k1, k2):
    """The Jaccard distance as re-ranking computes it (lambda 0), on normalised features,
    negative round-offs clipped as ClusterContrast does."""
    return np.clip(re_ranking(F.normalize(feats, dim=1), None, k1, k2, 0.0), 0, None)


@pytest.fixture(scope='module')
def data():
    feats, _ = features()
    return feats, dense_jaccard(feats, 20, 6)


@pytest.mark.parametrize('eps,min_samples', [(0.3, 2), (0.4, 4), (0.5, 6), (0.6, 2)])
def test_dbscan_on_sparse_neighbourhoods_equals_sklearn_on_the_dense_matrix(data, eps,
                                                                             min_samples):
    feats, dense = data
    assert dense[5, 6] == 0 and dense.min() == 0
    expected = DBSCAN(eps=eps, min_samples=min_samples, metric='precomputed').fit_predict(dense)
    labels = cluster_features(feats, 20, 6, eps, min_samples)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)
    assert labels.max() + 1 > 1 and (labels < 0).sum() < len(labels)  # non-trivial


def test_sparse_neighbourhoods_hold_exactly_the_dense_entries_within_eps(data):
    feats, dense = data
    sparse = jaccard_neighbours(feats, 20, 6, 0.6)
    rows, cols = np.nonzero(dense <= 0.6)
    assert sparse.nnz == len(rows) < 0.2 * dense.size  # stored: the neighbourhoods only
    np.testing.assert_array_equal(sparse[rows, cols].A1, dense[rows, cols])
    assert (np.diff(sparse.indptr) >= 1).all()  # every image is its own neighbour
    # chunking does not change a bit
    one_row = jaccard_neighbours(feats, 20, 6, 0.6, rows=1)
    assert (one_row != sparse).nnz == 0 and np.array_equal(one_row.data, sparse.data)


def test_camera_proxies_split_each_cluster_by_camera():
    labels = np.array([0, 0, 1, -1, 1, 0, 2])
    cams = np.array([1, 0, 0, 2, 0, 1, 2])
    proxies, cluster, camera = camera_proxies(labels, cams)
    # (cluster, camera) pairs in order: (0,0) (0,1) (1,0) (2,2)
    np.testing.assert_array_equal(proxies, [1, 0, 2, -1, 2, 1, 3])
    np.testing.assert_array_equal(cluster, [0, 0, 1, 2])
    np.testing.assert_array_equal(camera, [0, 1, 0, 2])
    none = camera_proxies(np.array([-1, -1]), np.array([0, 3]))
    assert (none[0] == -1).all() and len(none[1]) == len(none[2]) == 0


def test_clustering_summary_counts_sizes_and_purity():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2, -1, -1, 3, 3, 3, 3, 3, 3, 3, 3])
    assert size_histogram(labels) == {'1': 1, '2-3': 1, '4-7': 1, '8-15': 1}
    truth = np.array([7, 7, 7, 7, 5, 5, 5, 9, 9, 1, 2, 2, 2, 2, 2, 2, 2, 2])
    s = clustering_summary(labels, truth)
    assert (s['images'], s['clusters'], s['outliers']) == (18, 4, 2)
    kept = labels >= 0
    assert s['nmi'] == normalized_mutual_info_score(truth[kept], labels[kept])
    assert s['ari'] == adjusted_rand_score(truth[kept], labels[kept])
    assert 'nmi' not in clustering_summary(labels, np.zeros(18))  # unlabelled: one identity
    nothing = clustering_summary(np.full(5, -1), np.arange(5))
    assert (nothing['clusters'], nothing['outliers'], nothing['sizes']) == (0, 5, {})
    assert 'nmi' not in nothing


@pytest.mark.parametrize('key,value,message', [
    ('LOSS', 'proxy', "CLUSTER.LOSS must be 'cluster' or 'camera_proxy', not 'proxy'"),
    ('EPS', 1.0, 'CLUSTER.EPS must be between 0 and 1'),
    ('EPS', 0.0, 'CLUSTER.EPS must be between 0 and 1'),
    ('MIN_SAMPLES', 0, 'CLUSTER.MIN_SAMPLES must be at least 1, not 0'),
    ('PERIOD', 0, 'CLUSTER.PERIOD must be at least 1, not 0'),
    ('PROXY_BALANCE', 1.5, 'CLUSTER.PROXY_BALANCE in'),
])
def test_cluster_values_that_cannot_work_are_refused(key, value, message):
    cfg = load_config('', [f'CLUSTER.{key}', value])
    with pytest.raises(ReIDError, match=message.replace('(', r'\(').replace(')', r'\)')):
        check_cluster_config(cfg.CLUSTER)
    check_cluster_config(load_config('').CLUSTER)  # the defaults pass


@pytest.mark.parametrize('k1,k2', [(3, 6), (2, 12)])
def test_jaccard_with_k2_beyond_k1_matches_reference(k1, k2):
    feats, _ = features(n=60)
    unit = F.normalize(feats, dim=1).numpy()
    dense = np.clip(reference_re_ranking(unit, None, k1, k2, 0.0), 0, None)
    sparse = jaccard_neighbours(feats, k1, k2, 0.6)
    rows, cols = np.nonzero(dense <= 0.6)
    assert sparse.nnz == len(rows)
    assert np.abs(sparse[rows, cols].A1 - dense[rows, cols]).max() < 1e-3
