"""The dense re-ranking oracle shared by the re-ranking and clustering tests."""
import numpy as np


def reference_re_ranking(q, g, k1, k2, lam, transform='euclidean'):
    """Dense k-reciprocal re-ranking as TransReID / CLIP-ReID compute it (the test oracle).

    Squared euclidean over the stacked features, divided by the column maximum and
    transposed; V, its query expansion and the Jaccard accumulator in float16.
    g=None: the gallery is the query set (stacked set = queries only).
    """
    feats = q if g is None else np.concatenate([q, g])
    num_q, n = len(q), len(feats)
    if transform == 'euclidean':
        sq = (feats ** 2).sum(1)
        dist = (sq[:, None] + sq[None, :] - 2 * feats @ feats.T).astype(np.float32)
    else:  # cosine_sq: the animal code turns cosine similarity s into (2 - 2s)^2
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        dist = np.power(2 - 2 * unit @ unit.T, 2).astype(np.float32)
    dist = np.transpose(dist / np.max(dist, axis=0))
    V = np.zeros_like(dist).astype(np.float16)
    rank = np.argsort(dist, kind='stable')
    half = int(np.around(k1 / 2)) + 1
    for i in range(n):
        fwd = rank[i, :k1 + 1]
        recip = fwd[np.where(rank[fwd, :k1 + 1] == i)[0]]
        expansion = recip
        for cand in recip:
            c_fwd = rank[cand, :half]
            c_recip = c_fwd[np.where(rank[c_fwd, :half] == cand)[0]]
            if len(np.intersect1d(c_recip, recip)) > 2 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-dist[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        V = np.stack([np.mean(V[rank[i, :k2], :], axis=0) for i in range(n)]).astype(np.float16)
    jaccard = np.zeros((num_q, n), dtype=np.float16)
    for i in range(num_q):
        acc = np.zeros(n, dtype=np.float16)
        for k in np.where(V[i] != 0)[0]:
            rows = np.where(V[:, k] != 0)[0]
            acc[rows] = acc[rows] + np.minimum(V[i, k], V[rows, k])
        jaccard[i] = 1 - acc / (2 - acc)
    final = jaccard * (1 - lam) + dist[:num_q] * lam
    return final[:, 0 if g is None else num_q:]
