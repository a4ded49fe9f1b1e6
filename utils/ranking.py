"""Where each query's true matches land in its ranking, without sorting rows.

Every protocol reduces to the same question: after dropping the gallery entries the
protocol ignores for a query (same identity and camera, the query's own image, junk...),
at which 1-based ranks do the true matches appear when the gallery is ordered by
ascending distance, ties broken by gallery index (a stable sort)? CMC and AP follow.

A match's rank is one plus the number of kept entries ordered before it. Only a row's few
"named" entries (its matches and ignored entries, given as pairs) are looked at one by
one. The rest of the row is counted in one pass: every distance is mapped by a monotone
function to one of about G/4 bins spanning the row's matches, the bins are counted
(bincount), and only the entries sharing a bin with a match are compared exactly. Exact,
ties included, on any torch device. sorted_match_ranks is the plain algorithm (order
keys, searchsorted, counts on a dense mask): the reference, and the path for rows whose
matches have non-finite distances.
"""
from dataclasses import dataclass

import numpy as np
import torch

from .pairs import KeyIndex, pairs_to_mask, union

_INT64_MAX = torch.iinfo(torch.int64).max
_CPU_ELEMENTS = 1 << 22  # entries per pass on the CPU: few, large parallel operations
# bytes a ranking pass holds per distance: two work buffers (float, int32), the bin
# histogram and its cumulative sum (a quarter of the entries each, int64), the bin mask
RANK_BYTES_PER_ENTRY = 16


def cpu_rank_entries(num_cols):
    """Entries one CPU ranking pass holds: _CPU_ELEMENTS, and at least one row."""
    return max(_CPU_ELEMENTS, num_cols)


def order_keys(dist):
    """int64 keys, one per entry, whose ascending order is the stable ascending order of each row."""
    if dist.dtype == torch.float64:
        narrow = dist.float()
        if torch.equal(narrow.double(), dist):  # float32 values stored as float64: fast path
            dist = narrow
    if dist.dtype in (torch.float16, torch.bfloat16, torch.float32):
        # + 0.0 turns -0.0 into 0.0; every NaN becomes the positive one, whose bits follow
        # +inf's: NaN sorts last, as numpy's and torch's sorts put it (x86 gives inf - inf
        # and F.normalize of an inf feature a NaN with the sign bit set, which would sort first)
        value = dist.float() + 0.0
        bits = torch.where(value.isnan(), float('nan'), value).view(torch.int32)
        bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # IEEE order -> integer order
        cols = torch.arange(dist.shape[1], device=dist.device)
        return (bits.long() << 32) | cols
    order = torch.sort(dist, dim=1, stable=True).indices
    positions = torch.arange(dist.shape[1], device=dist.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def sorted_match_ranks(dist, q_pids, g_pids, excluded=None):
    """The plain algorithm on a [c, G] block: (num_pos [c], ranks [sum(num_pos)]), where row
    r's kept true matches are at ranks ranks[sum(num_pos[:r]):][:num_pos[r]] (ascending).
    excluded: [c, G] bool of entries the protocol ignores, or None."""
    c = dist.shape[0]
    pos = g_pids[None, :] == q_pids[:, None]
    if excluded is not None:
        pos &= ~excluded
    num_pos = pos.sum(1)
    m = int(num_pos.max()) if c else 0
    if m == 0:
        return num_pos, torch.zeros(0, dtype=torch.int64, device=dist.device)
    keys = order_keys(dist)
    rows, cols = pos.nonzero(as_tuple=True)
    slot = torch.arange(rows.numel(), device=dist.device) - (num_pos.cumsum(0) - num_pos)[rows]
    seq = torch.full((c, m), _INT64_MAX, dtype=torch.int64, device=dist.device)
    seq[rows, slot] = keys[rows, cols]
    seq = seq.sort(dim=1).values
    # bucket b of an entry = number of matches ordered strictly before it; the kept entries
    # in buckets 0..k are exactly those ordered at or before match k: their count is its rank.
    bucket = torch.searchsorted(seq, keys)
    bucket += torch.arange(c, device=dist.device)[:, None] * (m + 1)
    kept = bucket[~excluded] if excluded is not None else bucket.view(-1)
    counts = torch.bincount(kept, minlength=c * (m + 1)).view(c, m + 1)
    ranks = counts.cumsum(1)[:, :m]
    return num_pos, ranks[torch.arange(m, device=dist.device)[None, :] < num_pos[:, None]]


def _row_value_order(rows, vals):
    """Permutation ordering row-major pairs by (row, value, column)."""
    order = torch.sort(vals, stable=True).indices
    return order[torch.sort(rows[order], stable=True).indices]


def _count_before(dist, prow, pcol, pval, work):
    """For each named entry (prow, pcol) with value pval of a [r, G] block: how many entries
    of its row come before it in (value, column) order. work: (float, int32) buffers of at
    least r * G elements, reused so that no pass over the block allocates memory."""
    r, g = dist.shape
    dev = dist.device
    bins = max(16, g // 4)
    width = bins + 3  # bin 0: far below the row's matches; bins + 2: above them
    lo = torch.full((r,), float('inf'), dtype=dist.dtype, device=dev)
    lo = lo.scatter_reduce(0, prow, pval, 'amin')
    hi = torch.full_like(lo, -float('inf')).scatter_reduce(0, prow, pval, 'amax')
    lo, hi = torch.where(lo <= hi, lo, 0), torch.where(lo <= hi, hi, 0)
    span = torch.where(hi > lo, hi - lo, torch.where(lo != 0, lo.abs(), 1))
    # a monotone map of the distances to bins -1..bins+1 of their row, then shifted to the
    # row's own range (row r: r * width .. + bins + 2); the named entries' bins are read back
    # from the same tensor, so rounding cannot put an entry on the wrong side of one of them
    scale = bins / span
    x = work[0][:r * g].view(r, g)
    if float((lo.abs() * scale).max()) < 2 ** 20:  # d * scale is exact to well under a bin
        torch.addcmul(-(lo * scale)[:, None], dist, scale[:, None], out=x)
    else:  # subtract first: no cancellation when the distances sit far from 0
        torch.mul(torch.sub(dist, lo[:, None], out=x), scale[:, None], out=x)
    x.nan_to_num_(nan=float('inf')).clamp_(-1, bins + 1)  # nan: above all
    q = work[1][:r * g].view(r, g).copy_(x)  # truncation: -1..bins+1, monotone
    q += (torch.arange(r, device=dev, dtype=torch.int32) * width + 1)[:, None]
    q = q.view(-1)
    flat = prow * g + pcol
    pbin = q[flat].long()
    hist = torch.bincount(q, minlength=r * width)
    below = (hist.cumsum(0) - hist)[pbin] - prow * g  # entries of the row in lower bins
    mark = torch.zeros(r * width, dtype=torch.bool, device=dev)
    mark[pbin] = True
    cand = mark.index_select(0, q).nonzero().squeeze(1)  # flat, ascending; named entries included
    cbin = q[cand]
    order = torch.sort(dist.view(-1)[cand] + 0.0, stable=True).indices
    order = order[torch.sort(cbin[order], stable=True).indices]  # by (bin, value, column)
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=dev)
    within = position - torch.searchsorted(cbin[order], cbin)  # candidates of the bin before it
    return below + within[torch.searchsorted(cand, flat)]


def match_ranks(dist, q_pids, g_index, excluded=None):
    """Ranks of the kept true matches of each row of a [c, G] distance block.

    q_pids: [c] identities; g_index: KeyIndex of the gallery identities; excluded: (rows,
    cols) pairs of entries the protocol ignores, or None. Returns (num_pos [c], ranks
    [sum(num_pos)]) as sorted_match_ranks does.
    """
    c, g = dist.shape
    dev = dist.device
    if dist.dtype not in (torch.float32, torch.float64):
        dist = dist.float()
    dist = dist.contiguous()
    same = g_index.pairs(q_pids)
    if excluded is not None and excluded[0].numel():
        rows, cols = union(same, excluded, num_cols=g)
        flat = rows * g + cols
        is_excl = torch.isin(flat, excluded[0] * g + excluded[1])
        is_pos = torch.isin(flat, same[0] * g + same[1]) & ~is_excl
    else:
        rows, cols = same
        is_excl = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
        is_pos = ~is_excl
    num_pos = torch.bincount(rows[is_pos], minlength=c)
    pos_idx = is_pos.nonzero().squeeze(1)
    if pos_idx.numel() == 0:
        return num_pos, torch.zeros(0, dtype=torch.int64, device=dev)
    vals = dist[rows, cols] + 0.0
    if not torch.isfinite(vals[pos_idx]).all():
        mask = pairs_to_mask(excluded, c, g) if excluded is not None else None
        return sorted_match_ranks(dist, q_pids, g_index.keys, mask)
    before = torch.empty(pos_idx.numel(), dtype=torch.int64, device=dev)
    prow = rows[pos_idx]
    step = min(c, max(1, _CPU_ELEMENTS // max(g, 1))) if dev.type == 'cpu' else c
    work = (torch.empty(step * g, dtype=dist.dtype, device=dev),
            torch.empty(step * g, dtype=torch.int32, device=dev))
    bounds = torch.searchsorted(prow, torch.arange(0, c + step, step, device=dev)).tolist()
    for r0, lo, hi in zip(range(0, c, step), bounds[:-1], bounds[1:]):
        if hi > lo:
            sel = pos_idx[lo:hi]
            before[lo:hi] = _count_before(dist[r0:r0 + step], rows[sel] - r0, cols[sel], vals[sel], work)
    # kept entries before a match = all entries before it - ignored entries before it
    order = _row_value_order(rows, vals)
    excl = is_excl[order].long()
    excl_before = excl.cumsum(0) - excl
    row_sorted = rows[order]
    excl_before -= excl_before[torch.searchsorted(row_sorted, row_sorted)]
    keep = is_pos[order]
    which = torch.searchsorted(pos_idx, order[keep])
    return num_pos, before[which] - excl_before[keep] + 1


class RankCollector:
    """Runs match_ranks over the (start, end, dist_rows) chunks of one query x gallery matrix.

    excluded_fn(start, end) gives what the protocol ignores in rows start..end: (rows, cols)
    pairs (rows counted from start), or an [end-start, G] bool mask, or None.
    """

    def __init__(self, q_pids, g_pids, excluded_fn=None):
        self.q_pids, self.g_pids = torch.as_tensor(q_pids), torch.as_tensor(g_pids)
        self.excluded_fn = excluded_fn
        self.nums, self.ranks, self.on_device = [], [], {}

    def add(self, start, end, dist):
        dev = dist.device
        if dev not in self.on_device:
            self.on_device[dev] = (self.q_pids.to(dev), KeyIndex(self.g_pids.to(dev)))
        q_pids, g_index = self.on_device[dev]
        excl = self.excluded_fn(start, end) if self.excluded_fn is not None else None
        if torch.is_tensor(excl):
            excl = excl.to(dev).nonzero(as_tuple=True)
        elif excl is not None:
            excl = (excl[0].to(dev), excl[1].to(dev))
        num, ranks = match_ranks(dist, q_pids[start:end], g_index, excl)
        self.nums.append(num.cpu().numpy())
        self.ranks.append(ranks.cpu().numpy())

    def stats(self):
        if not self.nums:
            return RankStats(np.zeros(0, np.int64), np.zeros(0, np.int64))
        return RankStats(np.concatenate(self.nums), np.concatenate(self.ranks))


@dataclass
class RankStats:
    """Ranks of the true matches of every query (concatenated, query-major)."""
    num_pos: np.ndarray  # [Q] number of kept true matches
    ranks: np.ndarray  # [sum(num_pos)] 1-based ranks, ascending within each query

    @classmethod
    def collect(cls, chunks, q_pids, g_pids, excluded_fn=None):
        """RankStats of (start, end, dist_rows) chunks (see RankCollector)."""
        collector = RankCollector(q_pids, g_pids, excluded_fn)
        for start, end, dist in chunks:
            collector.add(start, end, dist)
        return collector.stats()

    @classmethod
    def concat(cls, parts):
        """The stats of consecutive query sets, in order."""
        return cls(np.concatenate([p.num_pos for p in parts]),
                   np.concatenate([p.ranks for p in parts]))

    def subset(self, index):
        """Stats of the queries at `index` (int array), in that order."""
        starts = np.cumsum(self.num_pos) - self.num_pos
        parts = [self.ranks[starts[i]:starts[i] + self.num_pos[i]] for i in index]
        ranks = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return RankStats(self.num_pos[index], ranks)

    def average_precision(self, mode='standard'):
        """AP of each query (nan where it has no match).

        standard:  mean over hits of the precision at the hit (the Market-1501 / TransReID AP).
        trapezoid: mean over hits of (precision just before the hit + precision at it) / 2,
                   the precision before a hit at rank 1 being 1 (the animal papers' AP).
        """
        q = self.num_pos.size
        ap = np.full(q, np.nan)
        valid = self.num_pos > 0
        if not valid.any():
            return ap
        starts = np.cumsum(self.num_pos) - self.num_pos
        hit = np.arange(self.ranks.size) - np.repeat(starts, self.num_pos) + 1.0
        rank = self.ranks.astype(np.float64)
        terms = hit / rank
        if mode == 'trapezoid':
            before = np.where(rank > 1, (hit - 1) / np.maximum(rank - 1, 1), 1.0)
            terms = (before + terms) / 2
        elif mode != 'standard':
            raise ValueError(f"unknown AP mode {mode!r} (use 'standard' or 'trapezoid')")
        ap[valid] = np.add.reduceat(terms, starts[valid]) / self.num_pos[valid]
        return ap

    def first_hit(self):
        """Rank of each query's first true match (0 where it has none)."""
        starts = np.cumsum(self.num_pos) - self.num_pos
        first = np.zeros(self.num_pos.size, np.int64)
        valid = self.num_pos > 0
        first[valid] = self.ranks[starts[valid]]
        return first

    def cmc_counts(self, max_rank):
        """[max_rank] number of queries whose first match is within rank r + 1."""
        first = self.first_hit()
        first = first[first > 0]
        hist = np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)
        return np.cumsum(hist[:max_rank])
