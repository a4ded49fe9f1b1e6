"""Pseudo-identities for unsupervised training: k-reciprocal Jaccard distance + DBSCAN.

The Jaccard distance is the one re-ranking computes (utils.reranking.KReciprocal over the
set against itself, squared euclidean distances of L2-normalised features, no
original-distance term), negative float16 round-offs clipped to 0 as ClusterContrast does.
Only the pairs closer than eps are kept, as a sparse matrix: DBSCAN (scikit-learn, metric
'precomputed') runs on those neighbourhoods, so no N x N matrix is ever held; the
reference implementations hold several dense N x N float32 matrices (4.0 GiB each at
MSMT17's 32,621 training images).
"""
import numpy as np
import torch
import torch.nn.functional as F

from .distance import as_tensor
from .finite import check_finite
from .reranking import KReciprocal

_CHUNK_ELEMENTS = 1 << 22  # Jaccard distances held at once (16 MiB)


def jaccard_neighbours(features, k1=30, k2=6, eps=0.6, rows=None, paths=None):
    """CSR [N, N] float32 of the Jaccard distances <= eps (the diagonal included).

    features: [N, D] tensor or array (normalised here), all finite (else a ReIDError naming
    the first of `paths`, or their rows). rows: rows per chunk (default: about 4M distances
    per chunk).
    """
    check_finite(('train', features, paths))
    feats = F.normalize(as_tensor(features), dim=1)
    n = feats.shape[0]
    kr = KReciprocal(feats, None, k1, k2, lambda_value=0.0, dist='euclidean')
    rows = rows or max(1, _CHUNK_ELEMENTS // n)
    # The kept pairs go into arrays allocated up front (grown by doubling): small arrays kept
    # from every chunk would pin the heap between the chunks' large temporaries, and the
    # process would grow by one chunk per chunk (4 GiB at MSMT17 size).
    indptr = np.zeros(n + 1, dtype=np.int64)
    cols, vals = np.empty(64 * n, dtype=np.int32), np.empty(64 * n, dtype=np.float32)
    for start in range(0, n, rows):
        end = min(start + rows, n)
        dist = kr.jaccard_rows(start, end).clamp_(min=0)
        near = dist <= eps
        indptr[start + 1:end + 1] = indptr[start] + near.sum(1).cumsum(0).cpu().numpy()
        a, b = indptr[start], indptr[end]
        if b > len(cols):
            cols, vals = (np.resize(x, max(b, 2 * len(x))) for x in (cols, vals))
        cols[a:b] = torch.nonzero(near)[:, 1].cpu().numpy()  # row-major, columns ascending
        vals[a:b] = dist[near].cpu().numpy()
    import scipy.sparse as sp  # here and below: scipy and scikit-learn load only when clustering

    nnz = indptr[-1]
    return sp.csr_matrix((vals[:nnz].copy(), cols[:nnz].copy(), indptr), shape=(n, n))


def dbscan_labels(neighbours, eps, min_samples):
    """DBSCAN labels (int64, -1 = outlier) from precomputed distances: a sparse matrix of the
    neighbourhoods (stored entries are the candidate neighbours) or a dense array."""
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_samples, metric='precomputed').fit_predict(
        neighbours).astype(np.int64)


def cluster_features(features, k1=30, k2=6, eps=0.6, min_samples=4, paths=None):
    """Pseudo-labels 0..C-1 of the features, -1 for DBSCAN's outliers; features that are not
    finite stop with a ReIDError naming the first of `paths` (or their rows)."""
    return dbscan_labels(jaccard_neighbours(features, k1, k2, eps, paths=paths), eps,
                         min_samples)


def camera_proxies(labels, camids):
    """Split each cluster by camera (CAP / O2CAP).

    Returns (proxy label of every image, -1 for outliers; cluster of each proxy; camera of
    each proxy). Proxies are numbered by cluster, then camera.
    """
    labels, camids = np.asarray(labels, dtype=np.int64), np.asarray(camids, dtype=np.int64)
    keep = labels >= 0
    width = int(camids.max()) + 1 if len(camids) else 1
    pairs, proxy_of = np.unique(labels[keep] * width + camids[keep], return_inverse=True)
    proxies = np.full(len(labels), -1, dtype=np.int64)
    proxies[keep] = proxy_of
    return proxies, pairs // width, pairs % width


def size_histogram(labels):
    """{'1': n, '2-3': n, '4-7': n, ...}: how many clusters have sizes in each power-of-two
    range (ranges with no cluster left out)."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels[labels >= 0])
    counts = np.bincount(np.floor(np.log2(sizes[sizes > 0])).astype(int))
    return {(str(2 ** b) if b == 0 else f'{2 ** b}-{2 ** (b + 1) - 1}'): int(c)
            for b, c in enumerate(counts) if c}


def clustering_summary(labels, true_labels=None):
    """Figures of one clustering: clusters, outliers, the size histogram and, when true labels
    with more than one identity are given, NMI and ARI of the clustered images against them
    (for the user's information only)."""
    labels = np.asarray(labels)
    kept = labels >= 0
    out = {'images': len(labels), 'clusters': int(labels.max()) + 1 if kept.any() else 0,
           'outliers': int((~kept).sum()), 'sizes': size_histogram(labels)}
    if true_labels is not None and len(np.unique(true_labels)) > 1 and kept.any():
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        truth = np.asarray(true_labels)[kept]
        out['nmi'] = float(normalized_mutual_info_score(truth, labels[kept]))
        out['ari'] = float(adjusted_rand_score(truth, labels[kept]))
    return out
