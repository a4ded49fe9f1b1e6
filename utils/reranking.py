"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), as upstream computes it, in bounded memory.

Computes what the TransReID / CLIP-ReID ``re_ranking`` computes: squared euclidean
distances over the stacked query+gallery features, each row divided by its maximum
(upstream: column maximum, then transpose), k-reciprocal neighbour sets expanded by
their half-size sets, Gaussian-kernel encodings V kept in float16, query expansion over
the k2 nearest, and final = (1 - lambda) * Jaccard + lambda * normalised distance.

Upstream holds several dense (Q+G)^2 matrices (~35 GB each for MSMT17). Here only the
top-(k1+1) neighbour lists, the row maxima and the sparse V (a few hundred non-zeros per
row) are kept; distances are recomputed block by block. The float16 steps of upstream
(V, its query expansion, the Jaccard accumulator and the Jaccard distance) are reproduced
operation by operation, in upstream's order, so results match it to float32 rounding of
the initial distances and do not depend on chunking or device.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .distance import BLOCK, as_tensor, chunk_rows

INITIAL_DISTANCES = ('euclidean', 'cosine_sq')
_PAIRS = 1 << 14  # feature pairs per gather when weighting V
_ROWS = 4096  # rows per step of the neighbour-set computations


def _f16(x):
    """Round float32 values to float16 (numpy's float16 ops compute in float32, then round)."""
    return x.half().float()


def _expand(starts, lengths):
    """Indices starts[i] + 0..lengths[i]-1 for every i, concatenated, with their owner i."""
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    offset = torch.arange(owner.numel(), device=lengths.device) - (lengths.cumsum(0) - lengths)[owner]
    return starts[owner] + offset, owner


class KReciprocal:
    """Neighbour lists and sparse encodings of the stacked features; final rows on demand.

    galFea=None: the gallery is the query set itself (animal protocols), so the stacked set
    holds every image once.
    """

    def __init__(self, probFea, galFea=None, k1=20, k2=6, lambda_value=0.3,
                 dist='euclidean', block=BLOCK):
        if dist not in INITIAL_DISTANCES:
            raise ValueError(f'unknown re-ranking distance {dist!r}; use one of {INITIAL_DISTANCES}')
        q = as_tensor(probFea)
        feats = q if galFea is None else torch.cat([q, as_tensor(galFea).to(q.device)])
        self.feats = F.normalize(feats, dim=1) if dist == 'cosine_sq' else feats
        self.sq = self.feats.pow(2).sum(1)
        self.dist, self.block, self.lam = dist, block, lambda_value
        self.n, self.num_query = feats.shape[0], q.shape[0]
        self.gal_start = 0 if galFea is None else self.num_query
        self.kf = min(k1 + 1, self.n)  # a row's forward neighbours, itself included
        self.kh = min(int(np.around(k1 / 2)) + 1, self.n)
        self.k2 = min(k2, self.n)
        self._neighbours()
        rows, cols, vals = self._encode()
        self._query_expansion(rows, cols, vals)
        self._index_gallery()

    # -- distances ---------------------------------------------------------------------
    def _initial(self, dot, sq_a, sq_b):
        if self.dist == 'euclidean':
            return sq_a + sq_b - 2 * dot
        return (2 - 2 * dot).square()

    def _block(self, b0):
        """Rows b0..b0+block of the initial distance against every stacked feature."""
        a = self.feats[b0:b0 + self.block]
        if self.dist == 'euclidean':
            return (self.sq[b0:b0 + self.block, None] + self.sq[None, :]).addmm_(a, self.feats.t(), alpha=-2)
        return (2 - 2 * (a @ self.feats.t())).square_()

    def _neighbours(self):
        dev = self.feats.device
        self.rowmax = torch.empty(self.n, device=dev)
        self.rank = torch.empty(self.n, self.kf, dtype=torch.int64, device=dev)
        for b0 in range(0, self.n, self.block):
            d = self._block(b0)
            self.rowmax[b0:b0 + d.shape[0]] = d.max(1).values
            self.rank[b0:b0 + d.shape[0]] = d.topk(self.kf, dim=1, largest=False).indices

    # -- k-reciprocal encoding -----------------------------------------------------------
    def _reciprocal(self, k, start, end):
        """[end-start, k] bool: rank[i, t] has i among its own k nearest."""
        fwd = self.rank[start:end, :k]
        back = self.rank[fwd, :k]
        own = torch.arange(start, end, device=fwd.device)[:, None, None]
        return (back == own).any(2)

    def _expansion(self, start, end, half_mask):
        """(rows, cols) of the expanded k-reciprocal sets of rows start..end."""
        cand = self.rank[start:end]
        in_k = self._reciprocal(self.kf, start, end)
        half = self.rank[cand, :self.kh]  # [c, k1 + 1, kh] half-size neighbours of each candidate
        half_ok = half_mask[cand]  # [c, k1 + 1, kh] which of them are half-reciprocal
        shared = ((half[..., None] == cand[:, None, None, :]) & in_k[:, None, None, :]).any(3)
        size = half_ok.sum(2)
        # upstream: len(intersect) > 2/3 * len(candidate set), in integers
        accept = in_k & (3 * (shared & half_ok).sum(2) > 2 * size)
        own = torch.arange(start, end, device=cand.device)
        rows = torch.cat([own[:, None].expand_as(cand)[in_k],
                          own[:, None, None].expand_as(half)[accept[..., None] & half_ok]])
        cols = torch.cat([cand[in_k], half[accept[..., None] & half_ok]])
        return rows, cols

    def _encode(self):
        """Sparse V: V[i, j] = exp(-d_ij) / sum over i's expanded set, rounded to float16."""
        steps = [(s, min(s + _ROWS, self.n)) for s in range(0, self.n, _ROWS)]
        half_mask = torch.cat([self._reciprocal(self.kh, s, e) for s, e in steps])
        keys = []
        for s, e in steps:
            rows, cols = self._expansion(s, e, half_mask)
            keys.append(torch.unique(rows * self.n + cols))
        keys = torch.cat(keys)  # sorted: each chunk sorted, chunks in row order
        rows, cols = keys // self.n, keys % self.n
        weight = torch.empty(keys.numel(), device=keys.device)
        for p in range(0, keys.numel(), _PAIRS):
            i, j = rows[p:p + _PAIRS], cols[p:p + _PAIRS]
            dot = (self.feats[i] * self.feats[j]).sum(1)
            weight[p:p + _PAIRS] = torch.exp(-self._initial(dot, self.sq[i], self.sq[j]) / self.rowmax[i])
        total = torch.zeros(self.n, device=keys.device).index_add_(0, rows, weight)
        return rows, cols, (weight / total[rows]).half().float()

    def _query_expansion(self, rows, cols, vals):
        """V[i] <- mean of V over i's k2 nearest rows (float32 mean, stored as float16)."""
        crow = torch.zeros(self.n + 1, dtype=torch.int64, device=rows.device)
        crow[1:] = torch.bincount(rows, minlength=self.n).cumsum(0)
        if self.k2 == 1:
            self.crow, self.col, self.val = crow, cols, vals
            return
        out_keys, out_vals = [], []
        step = max(1, (1 << 22) // max(1, self.k2 * int(crow[-1]) // max(1, self.n)))
        for s in range(0, self.n, step):
            e = min(s + step, self.n)
            src = self.rank[s:e, :self.k2].reshape(-1)
            idx, owner = _expand(crow[src], crow[src + 1] - crow[src])
            key = (owner // self.k2 + s) * self.n + cols[idx]
            ukey, inv = torch.unique(key, return_inverse=True)
            total = torch.zeros(ukey.numel(), dtype=torch.float64, device=key.device)
            total.index_add_(0, inv, vals[idx].double())
            mean = (total.float() / self.k2).half().float()
            keep = mean != 0
            out_keys.append(ukey[keep])
            out_vals.append(mean[keep])
        keys = torch.cat(out_keys)
        self.col, self.val = keys % self.n, torch.cat(out_vals)
        self.crow = torch.zeros(self.n + 1, dtype=torch.int64, device=keys.device)
        self.crow[1:] = torch.bincount(keys // self.n, minlength=self.n).cumsum(0)

    def _index_gallery(self):
        """Column-major index of the gallery rows of V: who has a weight on column k."""
        rows = torch.repeat_interleave(torch.arange(self.n, device=self.crow.device),
                                       self.crow[1:] - self.crow[:-1])
        gal = rows >= self.gal_start
        order = torch.sort(self.col[gal], stable=True).indices
        self.g_rows = (rows[gal] - self.gal_start)[order]
        self.g_vals = self.val[gal][order]
        self.g_ptr = torch.zeros(self.n + 1, dtype=torch.int64, device=rows.device)
        self.g_ptr[1:] = torch.bincount(self.col[gal], minlength=self.n).cumsum(0)

    # -- final distances -----------------------------------------------------------------
    @property
    def num_gallery(self):
        return self.n - self.gal_start

    def _overlap(self, start, end):
        """[end-start, G] sum_k min(V[i, k], V[j, k]) for query rows i and gallery rows j,
        accumulated as upstream does: in float16, k ascending (float32 tensor of float16 values).

        Step e adds every query row's e-th non-zero column k for all gallery rows holding
        column k: no (i, j) is touched twice in one step, so the float16 rounding after each
        addition happens in upstream's order whatever the chunking or device.
        """
        g = self.num_gallery
        acc = torch.zeros((end - start) * g, device=self.val.device)
        first = self.crow[start:end]
        count = self.crow[start + 1:end + 1] - first
        for e in range(int(count.max()) if end > start else 0):
            live = torch.nonzero(count > e).squeeze(1)
            ent = first[live] + e
            k = self.col[ent]
            idx, which = _expand(self.g_ptr[k], self.g_ptr[k + 1] - self.g_ptr[k])
            flat = live[which] * g + self.g_rows[idx]
            acc[flat] = _f16(acc[flat] + torch.minimum(self.val[ent][which], self.g_vals[idx]))
        return acc.view(end - start, g)

    def rows(self, start, end):
        """Final re-ranked distances [end-start, G] (float32) of query rows start..end."""
        parts = []
        for b0 in range(start - start % self.block, end, self.block):
            lo, hi = max(start, b0), min(end, b0 + self.block)
            d = self._block(b0)[lo - b0:hi - b0, self.gal_start:]
            parts.append(d / self.rowmax[lo:hi, None])
        original = torch.cat(parts)
        keep = float(torch.tensor(1 - self.lam).half())
        return _f16(self.jaccard_rows(start, end) * keep) + original * self.lam

    def jaccard_rows(self, start, end):
        """The Jaccard term alone [end-start, G] (float32 holding float16 values): what
        unsupervised training clusters on. Upstream's float16 arithmetic: 1 - t / (2 - t)."""
        t = self._overlap(start, end)
        return _f16(1 - _f16(t / _f16(2 - t)))


def re_ranking_chunks(probFea, galFea, k1=20, k2=6, lambda_value=0.3, dist='euclidean',
                      rows=None, block=BLOCK):
    """Yield (start, end, [end-start, G] float32 tensor) of the re-ranked query x gallery
    distances, on the features' device; peak memory is one chunk plus the sparse encodings."""
    kr = KReciprocal(probFea, galFea, k1, k2, lambda_value, dist, block)
    rows = chunk_rows(kr.num_gallery, block, 1 << 22) if rows is None else -(-rows // block) * block
    for start in range(0, kr.num_query, rows):
        end = min(start + rows, kr.num_query)
        yield start, end, kr.rows(start, end)


def re_ranking(probFea, galFea, k1=20, k2=6, lambda_value=0.3, dist='euclidean'):
    """Re-ranked [Q, G] float32 numpy distances (upstream signature and return type).

    probFea, galFea: [Q, D] and [G, D] tensors or arrays (galFea=None: gallery = queries).
    dist: initial distance, 'euclidean' (squared, upstream) or 'cosine_sq' ((2 - 2 cos)^2,
    the animal code's variant).
    """
    q = as_tensor(probFea).shape[0]
    g = q if galFea is None else as_tensor(galFea).shape[0]
    out = np.empty((q, g), dtype=np.float32)
    for start, end, chunk in re_ranking_chunks(probFea, galFea, k1, k2, lambda_value, dist):
        out[start:end] = chunk.cpu().numpy()
    return out
