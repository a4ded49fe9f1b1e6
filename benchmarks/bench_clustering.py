"""Time and peak memory of the clustering step of unsupervised training, at the training-set
sizes of Market1501 (12,936 images) and MSMT17 (32,621 images).

    python benchmarks/bench_clustering.py                    # both sizes (minutes on a CPU)
    python benchmarks/bench_clustering.py --scales market
    python benchmarks/bench_clustering.py --agreement 1500   # vs ClusterContrast's definition

Features: dim 1280 (PCL-CLIP's test feature), one random unit centre per identity plus
Gaussian noise, so DBSCAN finds clusters and outliers. Each measurement runs in a fresh
process: "peak" is the process's peak resident set (getrusage maxrss, torch
included); "added" is the peak minus the resident memory once the features exist.

--agreement N compares, on N such features, the partitions DBSCAN gives on this project's
Jaccard distance (re-ranking's, lambda 0) with those on a dense float32 implementation of
ClusterContrast's definition (neighbours by 2 - 2 cos, k1 forward neighbours, weights
exp(-d) without the row-maximum scaling), written here for the comparison.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

SCALES = {'market': (12936, 751), 'msmt17': (32621, 1041)}
GB = 1 << 30
K1, K2, EPS, MIN_SAMPLES = 30, 6, 0.6, 4


def rss_gb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / GB


def make_features(n, ids, dim=1280, noise=(2.6, 3.6), seed=0):
    """(features, identities): a unit centre per identity plus Gaussian noise whose norm is
    drawn per identity from the `noise` range (the harder identities give DBSCAN outliers)."""
    import torch
    import torch.nn.functional as F
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(ids, dim, generator=gen), dim=1)
    scale = noise[0] + (noise[1] - noise[0]) * torch.rand(ids, 1, generator=gen)
    truth = torch.randint(0, ids, (n,), generator=gen)
    noisy = centres[truth] + scale[truth] / dim ** 0.5 * torch.randn(n, dim, generator=gen)
    return noisy, truth


def measure(scale):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch
    from utils.clustering import clustering_summary, dbscan_labels, jaccard_neighbours

    n, ids = SCALES[scale]
    feats, truth = make_features(n, ids)
    base = rss_gb()
    start = time.perf_counter()
    neighbours = jaccard_neighbours(feats, K1, K2, EPS)
    jaccard_s = time.perf_counter() - start
    labels = dbscan_labels(neighbours, EPS, MIN_SAMPLES)
    total_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    s = clustering_summary(labels, truth.numpy())
    return {'scale': scale, 'images': n, 'jaccard_s': round(jaccard_s, 1),
            'dbscan_s': round(total_s - jaccard_s, 1), 'total_s': round(total_s, 1),
            'peak_gb': round(peak, 2), 'added_gb': round(peak - base, 2),
            'neighbours_per_image': round(neighbours.nnz / n, 1), 'clusters': s['clusters'],
            'outliers': s['outliers'], 'nmi': round(s['nmi'], 3),
            'dense_matrix_gb': round(n * n * 4 / GB, 2), 'threads': torch.get_num_threads()}


def clustercontrast_jaccard(feats, k1, k2):
    """Dense float32 Jaccard distance as ClusterContrast defines it (for the comparison)."""
    import numpy as np
    f = feats.numpy()
    dist = 2 - 2 * f @ f.T
    rank = np.argsort(dist, axis=1, kind='stable')[:, :k1]

    def reciprocal(i, k):
        forward = rank[i, :k + 1]
        return forward[(rank[forward, :k + 1] == i).any(1)]

    full = [reciprocal(i, k1) for i in range(len(f))]
    half = [reciprocal(i, int(np.around(k1 / 2))) for i in range(len(f))]
    v = np.zeros_like(dist)
    for i in range(len(f)):
        expanded = [full[i]] + [half[c] for c in full[i]
                                if len(np.intersect1d(half[c], full[i])) > 2 / 3 * len(half[c])]
        expanded = np.unique(np.concatenate(expanded))
        weight = np.exp(-dist[i, expanded])
        v[i, expanded] = weight / weight.sum()
    v = np.stack([v[rank[i, :k2]].mean(0) for i in range(len(f))])
    shared = np.stack([np.minimum(v[i], v).sum(1) for i in range(len(f))])
    return np.clip(1 - shared / (2 - shared), 0, None)


def agreement(n, seeds=(0, 1, 2)):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch.nn.functional as F
    from sklearn.metrics import adjusted_rand_score
    from utils.clustering import dbscan_labels, jaccard_neighbours

    rows = []
    for seed in seeds:
        feats, _ = make_features(n, n // 8, seed=seed)
        feats = F.normalize(feats, dim=1)
        reference = clustercontrast_jaccard(feats, K1, K2)
        for eps in (0.5, 0.6, 0.7):
            ours = dbscan_labels(jaccard_neighbours(feats, K1, K2, eps), eps, MIN_SAMPLES)
            theirs = dbscan_labels(reference, eps, MIN_SAMPLES)
            rows.append({'seed': seed, 'eps': eps, 'clusters': [int(ours.max()) + 1,
                                                                int(theirs.max()) + 1],
                         'outliers': [int((ours < 0).sum()), int((theirs < 0).sum())],
                         'ari': round(adjusted_rand_score(theirs, ours), 3)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scales', default='market,msmt17', help='comma list of market, msmt17')
    parser.add_argument('--agreement', type=int, default=0, metavar='N')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    if args.agreement:
        for row in agreement(args.agreement):
            print(json.dumps(row))
        return
    for scale in args.scales.split(','):
        out = subprocess.run([sys.executable, __file__, '--child', scale], check=True,
                             capture_output=True, text=True).stdout
        print(out.strip().splitlines()[-1])


if __name__ == '__main__':
    main()
