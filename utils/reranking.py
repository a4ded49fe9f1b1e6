"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), as upstream computes it, in bounded memory.

Computes what the TransReID / CLIP-ReID ``re_ranking`` computes: squared euclidean
distances over the stacked query+gallery features, each row divided by its maximum
(upstream: column maximum, then transpose), k-reciprocal neighbour sets expanded by
their half-size sets, Gaussian-kernel encodings V kept in float16, query expansion over
the k2 nearest, and final = (1 - lambda) * Jaccard + lambda * normalised distance.

Upstream holds several dense (Q+G)^2 matrices (~35 GB each for MSMT17). Here one pass
over half of the symmetric distance matrix (utils.neighbours) keeps the top-max(k1+1, k2)
neighbour lists, the row maxima and the query x gallery distances; V is sparse (a few
hundred non-zeros per row). The float16 steps of upstream (V, its query expansion, the
Jaccard accumulator and the Jaccard distance) are reproduced operation by operation, in
upstream's order, so results match it to float32 rounding of the initial distances and do
not depend on chunking or device.

Parameter sweeps: k1, k2 and lambda may be lists. The neighbour pass runs once, for the
largest list any setting needs (a smaller setting's lists are its prefix); each (k1, k2) is encoded once and every
lambda reuses its Jaccard distances.
"""
import math
from itertools import product

import numpy as np
import torch

from .distance import as_tensor
from .errors import ReIDError
from .memory import GIB
from .neighbours import INITIAL_DISTANCES, NeighbourLists, StackedFeatures
from .pairs import expand

__all__ = ['INITIAL_DISTANCES', 'KReciprocal', 're_ranking', 're_ranking_chunks', 're_ranking_sweep']

_PAIRS = 1 << 16  # pairs per step when weighting V
_ROWS = 4096  # rows per step of the neighbour-set computations
_QE_ENTRIES = 1 << 20  # V entries gathered per step of the query expansion
# query x gallery entries per chunk of final distances; on the CPU the Jaccard accumulator
# of a chunk should stay in cache, but a chunk should still have a few dozen rows
_CHUNK_ELEMENTS = {'cpu': 1 << 20, 'cuda': 1 << 26}
_MIN_ROWS = 32


def _row_sums(rows, values, n):
    """float32 sum of each row's values, added one by one in their order (rows sorted): the
    same bits on every device and in every run, unlike an index_add_ with repeated rows."""
    counts = torch.bincount(rows, minlength=n)
    # a value's slot in its row: its index less the index of the row's first value
    slot = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    by_slot = torch.zeros(int(counts.max()) if rows.numel() else 0, n, device=values.device)
    by_slot[slot, rows] = values  # column r holds row r's values in order, then zeros
    total = torch.zeros(n, device=values.device)
    for column in by_slot:
        total += column
    return total


def list_length(k1, k2):
    """Neighbours a row's list must hold: k1 + 1 for the k-reciprocal sets, k2 for query
    expansion (upstream reads both from one full ranking, so k2 may exceed k1 + 1)."""
    return max(k1 + 1, k2)


def as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


class KReciprocal:
    """Sparse k-reciprocal encodings of the stacked features for one (k1, k2), and the
    Jaccard / re-ranked distances of query rows on demand.

    probFea, galFea, dist, block as for re_ranking. neighbours: a NeighbourLists of these
    features (for k >= k1 + 1) to share, as a sweep does; its stash holds the initial query
    x gallery distances that lambda > 0 needs. V is kept as CSR (crow, col, val: float32
    holding float16 values) after query expansion, and column-major over the gallery rows
    (g_ptr, g_rows, g_vals).
    """

    def __init__(self, probFea=None, galFea=None, k1=20, k2=6, lambda_value=0.3,
                 dist='euclidean', block=None, neighbours=None):
        if neighbours is None:
            stacked = StackedFeatures(probFea, galFea, dist, block)
            stash = None if lambda_value == 0 else torch.empty(
                stacked.num_query, stacked.n - stacked.gal_start, device=stacked.device)
            neighbours = NeighbourLists(stacked, list_length(k1, k2), stash)
        if neighbours.k < min(list_length(k1, k2), neighbours.stacked.n):
            raise ValueError(f'neighbour lists of {neighbours.k} are too short for k1={k1}, k2={k2}')
        self.neighbours, self.lam = neighbours, lambda_value
        self.stacked = stacked = neighbours.stacked
        self.n = stacked.n
        self.rowmax = neighbours.rowmax
        self.kf = min(k1 + 1, self.n)  # a row's forward neighbours, itself included
        self.kh = min(int(np.around(k1 / 2)) + 1, self.n)
        self.k2 = min(k2, self.n)
        self.rank = neighbours.index[:, :self.kf]
        self.dist = neighbours.distances[:, :self.kf]
        self.expansion_sources = neighbours.index[:, :self.k2]  # query expansion's rows
        rows, cols, vals = self._encode()
        self._query_expansion(rows, cols, vals)
        self._index_gallery()

    # -- k-reciprocal encoding -----------------------------------------------------------
    def _reciprocal(self, k, start, end):
        """[end-start, k] bool: rank[i, t] has i among its own k nearest."""
        forward = self.rank[start:end, :k]
        backward = self.rank[forward, :k]  # [rows, k, k]: the k nearest of each neighbour
        own = torch.arange(start, end, device=forward.device)[:, None, None]
        return (backward == own).any(2)

    def _expansion(self, start, end, half_mask):
        """(rows, cols) of the expanded k-reciprocal sets of rows start..end."""
        cand = self.rank[start:end]  # [rows, kf] each row's forward neighbours
        num_rows, kf = cand.shape
        in_k = self._reciprocal(self.kf, start, end)
        half = self.rank[cand, :self.kh]  # [rows, kf, kh] half-size neighbours of each candidate
        half_ok = half_mask[cand]  # [rows, kf, kh] which of them are half-reciprocal
        # the k-reciprocal set, sorted, non-members as -1 in front: a searchsorted finds a
        # member where it is, and anything else lands on a different value
        members = torch.where(in_k, cand, -1).sort(1).values
        at = torch.searchsorted(members, half.reshape(num_rows, -1)).clamp_(max=kf - 1)
        shared = (members.gather(1, at) == half.reshape(num_rows, -1)).view_as(half)
        size = half_ok.sum(2)
        # upstream: len(intersect) > 2/3 * len(candidate set), in integers
        accept = in_k & (3 * (shared & half_ok).sum(2) > 2 * size)
        own = torch.arange(start, end, device=cand.device)
        added = accept[..., None] & half_ok  # the half-reciprocal sets of accepted candidates
        rows = torch.cat([own[:, None].expand_as(cand)[in_k], own[:, None, None].expand_as(half)[added]])
        cols = torch.cat([cand[in_k], half[added]])
        return rows, cols

    def _encode(self):
        """Sparse V: V[i, j] = exp(-d_ij) / sum over i's expanded set, rounded to float16.
        d_ij is the neighbour pass's own distance where j is one of i's k1 + 1 nearest (nearly
        always), a gathered dot product otherwise."""
        steps = [(s, min(s + _ROWS, self.n)) for s in range(0, self.n, _ROWS)]
        half_mask = torch.cat([self._reciprocal(self.kh, s, e) for s, e in steps])
        keys = []
        for s, e in steps:
            rows, cols = self._expansion(s, e, half_mask)
            keys.append(torch.unique(rows * self.n + cols))
        keys = torch.cat(keys)  # sorted: each chunk sorted, chunks in row order
        rows, cols = keys // self.n, keys % self.n
        dist = torch.empty(keys.numel(), device=keys.device)
        for first in range(0, keys.numel(), _PAIRS):
            row, col = rows[first:first + _PAIRS], cols[first:first + _PAIRS]
            listed = self.rank[row] == col[:, None]  # most members are among the row's neighbours
            found = listed.any(1)
            # argmax of a bool row: the column of its one True (0 when none: fixed below)
            at = listed.int().argmax(1, keepdim=True)
            dist[first:first + _PAIRS] = self.dist[row].gather(1, at)[:, 0]
            if not found.all():
                lost = (~found).nonzero().squeeze(1)
                dist[first + lost] = self.stacked.pair_distances(row[lost], col[lost])
        weight = torch.exp(-dist / self.rowmax[rows])
        return rows, cols, (weight / _row_sums(rows, weight, self.n)[rows]).half().float()

    def _query_expansion(self, rows, cols, vals):
        """V[i] <- mean of V over i's k2 nearest rows, as numpy's float16 mean: float32 sums
        in neighbour order, divided by k2, rounded to float16."""
        n, k2, dev = self.n, self.k2, rows.device
        crow = torch.zeros(n + 1, dtype=torch.int64, device=dev)
        crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)  # CSR: row r is crow[r]:crow[r+1]
        if k2 == 1:
            self.crow, self.col, self.val = crow, cols.int(), vals
            return
        out_counts = torch.zeros(n, dtype=torch.int64, device=dev)
        out_cols, out_vals = [], []
        mean_row_nnz = max(1, int(crow[-1]) // max(1, n))
        step = max(1, _QE_ENTRIES // max(1, k2 * mean_row_nnz))
        for first in range(0, n, step):
            last = min(first + step, n)
            # sources: row-major [last-first, k2], so source s expands row first + s // k2
            # and is that row's (s % k2)-th nearest
            sources = self.expansion_sources[first:last].reshape(-1)
            entry, source = expand(crow[sources], crow[sources + 1] - crow[sources])
            target = source // k2  # the expanded row, relative to `first`
            key, slot = torch.unique(target * n + cols[entry], return_inverse=True)
            by_nth = torch.sort(source % k2, stable=True)
            bounds = [0] + torch.bincount(by_nth.values, minlength=k2).cumsum(0).tolist()
            total = torch.zeros(key.numel(), device=dev)
            # the nth nearest of every row in turn: within one nth, each (row, column) key
            # occurs at most once, so the float32 sums are added in neighbour order
            for a, b in zip(bounds[:-1], bounds[1:]):
                take = by_nth.indices[a:b]
                total.index_add_(0, slot[take], vals[entry[take]])
            mean = (total / k2).half().float()
            keep = mean != 0
            key = key[keep]
            out_counts[first:last] = torch.bincount(key // n, minlength=last - first)
            out_cols.append((key % n).int())
            out_vals.append(mean[keep])
        self.col, self.val = torch.cat(out_cols), torch.cat(out_vals)
        self.crow = torch.zeros(n + 1, dtype=torch.int64, device=dev)
        self.crow[1:] = out_counts.cumsum(0)

    def _index_gallery(self):
        """Column-major index of the gallery rows of V: who has a weight on column k."""
        gal_start = self.stacked.gal_start
        first = int(self.crow[gal_start])  # CSR rows are in order: the gallery's entries follow
        cols = self.col[first:]
        order = torch.sort(cols, stable=True).indices  # by column; rows ascending within one
        counts = self.crow[gal_start + 1:] - self.crow[gal_start:-1]
        # the gallery row of each entry, counted from the first gallery row
        rows = torch.repeat_interleave(torch.arange(counts.numel(), device=cols.device), counts)
        self.g_rows = rows[order]
        self.g_vals = self.val[first:][order].half()
        self.g_ptr = torch.zeros(self.n + 1, dtype=torch.int64, device=cols.device)
        self.g_ptr[1:] = torch.bincount(cols, minlength=self.n).cumsum(0)

    # -- final distances -----------------------------------------------------------------
    def overlap(self, start, end):
        """[end-start, G] float16 sum_k min(V[i, k], V[j, k]) for query rows i and gallery
        rows j, accumulated as upstream does: in float16, k ascending.

        Step e adds every query row's e-th non-zero column k for all gallery rows holding
        column k: no (i, j) is touched twice in one step, so the float16 rounding after each
        addition happens in upstream's order whatever the chunking or device. All the
        (i, j, k) terms are listed at once, grouped by step; a step adds one slice of them
        (float16 adds compute in float32 and round, as numpy's do).
        """
        num_gallery = self.stacked.n - self.stacked.gal_start
        dev = self.val.device
        acc = torch.zeros((end - start) * num_gallery, dtype=torch.float16, device=dev)
        row_start = self.crow[start:end]
        entry, row = expand(row_start, self.crow[start + 1:end + 1] - row_start)
        if entry.numel() == 0:
            return acc.view(end - start, num_gallery)
        step = entry - row_start[row]  # an entry's place in its row: the step that adds it
        order = torch.sort(step, stable=True).indices
        entry, row, step = entry[order], row[order], step[order]
        column = self.col[entry]
        lengths = self.g_ptr[column + 1] - self.g_ptr[column]  # gallery rows holding the column
        total = int(lengths.sum())
        # one term per (entry, gallery row holding its column): `source` is the entry, `held`
        # the place of that gallery row in g_rows (the column's first place, then on in turn)
        source = torch.repeat_interleave(torch.arange(entry.numel(), device=dev), lengths,
                                         output_size=total)
        held = (self.g_ptr[column] - (lengths.cumsum(0) - lengths)).index_select(0, source)
        held += torch.arange(total, device=dev)
        flat = (row * num_gallery).index_select(0, source) + self.g_rows.index_select(0, held)
        terms = torch.minimum(self.val[entry].half().index_select(0, source),
                              self.g_vals.index_select(0, held))
        per_step = torch.zeros(int(step[-1]) + 1, dtype=torch.int64, device=dev)
        bounds = [0] + per_step.index_add_(0, step, lengths).cumsum(0).tolist()
        for a, b in zip(bounds[:-1], bounds[1:]):  # targets are unique within a step
            target = flat[a:b]
            acc.index_copy_(0, target, acc.index_select(0, target) + terms[a:b])
        return acc.view(end - start, num_gallery)

    def _jaccard(self, start, end):
        t = self.overlap(start, end)
        return 1 - t / (2 - t)  # upstream's float16 arithmetic, one rounding per operation

    def jaccard_rows(self, start, end):
        """The Jaccard distances alone [end-start, G] (float32 holding float16 values)."""
        return self._jaccard(start, end).float()

    def final(self, start, end, lambdas):
        """Re-ranked distances of query rows start..end for each lambda (float32 tensors):
        (1 - lambda) * Jaccard in float16, plus lambda * the row-normalised initial distance."""
        jaccard = self._jaccard(start, end)
        stash = self.neighbours.stash
        if stash is None and any(lam != 0 for lam in lambdas):
            raise ValueError('lambda > 0 needs the initial distances: build with lambda_value > 0')
        original = None if stash is None else stash[start:end] / self.rowmax[start:end, None]
        for lam in lambdas:
            keep = torch.tensor(1 - lam, dtype=torch.float16, device=jaccard.device)
            part = (jaccard * keep).float()
            yield part if original is None else part + original * lam

    def rows(self, start, end):
        """Re-ranked distances [end-start, G] of query rows start..end for lambda_value."""
        return next(self.final(start, end, [self.lam]))


def _steps_within(budget, stacked, k, num_gallery, stash_bytes):
    """(neighbour-pass block, final rows) within `budget` bytes: today's sizes when they fit.
    The stash and the neighbour lists stay for the whole computation; the pass's two block
    buffers and mask (about 12 bytes per block entry) and a chunk of final distances (about
    24 bytes per entry: the float16 overlap and Jaccard, the float32 results) come in turn."""
    held = stash_bytes + stacked.n * (8 * k + 12)
    room = budget - held
    if room <= 0:
        raise ReIDError(f'TEST.MEMORY_BUDGET of {budget / GIB:.3g} GiB cannot hold re-ranking\'s '
                        f'initial query x gallery distances and neighbour lists '
                        f'({held / GIB:.3g} GiB): give a larger budget')
    block = min(stacked.block, max(1, math.isqrt(room // 12)))
    elements = _CHUNK_ELEMENTS.get(stacked.device.type, _CHUNK_ELEMENTS['cuda'])
    rows = max(_MIN_ROWS, elements // max(num_gallery, 1))
    return block, max(1, min(rows, room // (24 * max(num_gallery, 1))))


def re_ranking_sweep(probFea, galFea, k1=20, k2=6, lambda_value=0.3, dist='euclidean',
                     rows=None, block=None, out=None, queries=None, memory_budget=None):
    """Yield (setting, start, end, [end-start, G] float32 tensor) of the re-ranked query x
    gallery distances, on the features' device, for every setting of (k1, k2, lambda) in
    itertools.product order of the lists (a number counts as a one-item list).

    queries: the (first, end) query rows to yield (all by default; the neighbour pass always
    covers every row). out: an optional float32 numpy array of those rows that also receives
    setting 0's distances (with one setting, all rows, on the CPU the work happens in it).
    Peak memory: one Q x G matrix (two when sweeping with `out`) plus one chunk and the
    sparse encodings. memory_budget (bytes): the neighbour pass's blocks and the chunks
    shrink to fit, and a budget that cannot hold the Q x G matrix is refused.
    """
    k1s, k2s, lambdas = as_list(k1), as_list(k2), as_list(lambda_value)
    stacked = StackedFeatures(probFea, galFea, dist, block)
    q, g = stacked.num_query, stacked.n - stacked.gal_start
    first, last = queries or (0, q)
    single = len(k1s) * len(k2s) * len(lambdas) == 1
    in_place = (out is not None and single and stacked.device.type == 'cpu'
                and (first, last) == (0, q))
    length = list_length(max(k1s), max(k2s))
    default_rows = max(_MIN_ROWS, _CHUNK_ELEMENTS.get(stacked.device.type,
                                                      _CHUNK_ELEMENTS['cuda']) // max(g, 1))
    if memory_budget is not None:
        stacked.block, budget_rows = _steps_within(memory_budget, stacked, length, g,
                                                   0 if in_place else 4 * q * g)
        default_rows = min(default_rows, budget_rows)
    stash = torch.from_numpy(out) if in_place else torch.empty(q, g, device=stacked.device)
    neighbours = NeighbourLists(stacked, length, stash)
    rows = rows or default_rows
    for (i1, a), (i2, b) in product(enumerate(k1s), enumerate(k2s)):
        kr = KReciprocal(k1=a, k2=b, neighbours=neighbours)
        for start in range(first, last, rows):
            end = min(start + rows, last)
            for i3, chunk in enumerate(kr.final(start, end, lambdas)):
                setting = (i1 * len(k2s) + i2) * len(lambdas) + i3
                if in_place:
                    chunk = stash[start:end].copy_(chunk)
                elif out is not None and setting == 0:
                    out[start - first:end - first] = chunk.cpu().numpy()
                yield setting, start, end, chunk


def re_ranking_chunks(probFea, galFea, k1=20, k2=6, lambda_value=0.3, dist='euclidean',
                      rows=None, block=None, out=None):
    """Yield (start, end, [end-start, G] float32 tensor) of the re-ranked query x gallery
    distances of one (k1, k2, lambda), on the features' device."""
    for _, start, end, chunk in re_ranking_sweep(probFea, galFea, k1, k2, lambda_value, dist,
                                                 rows, block, out):
        yield start, end, chunk


def re_ranking(probFea, galFea, k1=20, k2=6, lambda_value=0.3, dist='euclidean'):
    """Re-ranked [Q, G] float32 numpy distances (upstream signature and return type).

    probFea, galFea: [Q, D] and [G, D] tensors or arrays (galFea=None: gallery = queries).
    dist: initial distance, 'euclidean' (squared, upstream) or 'cosine_sq' ((2 - 2 cos)^2,
    the animal code's variant).
    """
    q = as_tensor(probFea).shape[0]
    g = q if galFea is None else as_tensor(galFea).shape[0]
    out = torch.empty(q, g).numpy()  # as utils.protocols.scan: no huge-page first-touch stall
    for _ in re_ranking_chunks(probFea, galFea, k1, k2, lambda_value, dist, out=out):
        pass
    return out
