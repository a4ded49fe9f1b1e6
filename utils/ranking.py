"""Where each query's true matches land in its ranking, without sorting rows.

Every protocol reduces to the same question: after dropping the gallery entries the
protocol ignores for a query (same identity and camera, the query's own image, junk...),
at which 1-based ranks do the true matches appear when the gallery is ordered by
ascending distance, ties broken by gallery index (a stable sort)? CMC and AP follow.

A match's rank is one plus the number of kept entries ordered before it. Only a row's few
"named" entries (its matches and ignored entries, given as pairs) are looked at one by
one. The rest of the row is counted in one pass: every distance is mapped by a monotone
function to one of about G/8 bins spanning the row's matches, the bins are counted
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
_PER_BIN = 8  # entries a bin, about: fewer bins than that cost more histogram than they save
# bins of one pass, all rows together: float32 holds their integer indices exactly, with room
# for the rounding of the map to them
_PASS_BINS = 1 << 22
_MARGIN_BINS = 5  # a row's bins besides `bins`: one below and one above, one of margin each
# bytes a ranking pass holds per distance, with some margin: two work buffers (float, int32),
# the bin histogram and two cumulative sums (an eighth of the entries each, int64), the mask
# of candidate bins
RANK_BYTES_PER_ENTRY = 24


def cpu_rank_entries(num_cols):
    """Entries one CPU ranking pass holds: _CPU_ELEMENTS, and at least one row."""
    return max(_CPU_ELEMENTS, num_cols)


# blocks from this size on the CPU are counted by utils.ranking_cpu's fused loop; below it,
# torch's passes cost less than loading numba (about 0.6 s a process)
FUSED_MIN_ENTRIES = 1 << 20

# bytes order_keys holds per entry at its peak: a float32 copy, a temporary, the int64 keys
ORDER_KEY_BYTES = 16


def order_keys(dist):
    """int64 keys, one per entry, whose ascending order is the stable ascending order of each
    row; float keys are (value bits, column), so they are unique within a row."""
    if dist.dtype == torch.float64:
        narrow = dist.float()
        if torch.equal(narrow.double(), dist):  # float32 values stored as float64: fast path
            dist = narrow
    if dist.dtype in (torch.float16, torch.bfloat16, torch.float32):
        # + 0.0 turns -0.0 into 0.0; every NaN becomes the positive one, whose bits follow
        # +inf's: NaN sorts last, as numpy's and torch's sorts put it (x86 gives inf - inf
        # and F.normalize of an inf feature a NaN with the sign bit set, which would sort first)
        value = dist.float() + 0.0
        bits = value.masked_fill_(value.isnan(), float('nan')).view(torch.int32)
        bits ^= (bits >> 31).bitwise_and_(0x7FFFFFFF)  # IEEE order -> integer order
        cols = torch.arange(dist.shape[1], device=dist.device)
        return bits.to(torch.int64).bitwise_left_shift_(32).bitwise_or_(cols)
    order = torch.sort(dist, dim=1, stable=True).indices
    positions = torch.arange(dist.shape[1], device=dist.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def sorted_match_ranks(dist, q_pids, g_pids, excluded=None):
    """The plain algorithm on a [c, G] block: (num_pos [c], ranks [sum(num_pos)]), where row
    r's kept true matches are at ranks ranks[sum(num_pos[:r]):][:num_pos[r]] (ascending).
    excluded: [c, G] bool of entries the protocol ignores, or None."""
    num_rows, dev = dist.shape[0], dist.device
    positive = g_pids[None, :] == q_pids[:, None]
    if excluded is not None:
        positive &= ~excluded
    num_pos = positive.sum(1)
    most = int(num_pos.max()) if num_rows else 0  # the most matches of any row
    if most == 0:
        return num_pos, torch.zeros(0, dtype=torch.int64, device=dev)
    keys = order_keys(dist)
    rows, cols = positive.nonzero(as_tuple=True)  # row-major
    # a match's slot in its row: its index minus the index of its row's first match
    slot = torch.arange(rows.numel(), device=dev) - (num_pos.cumsum(0) - num_pos)[rows]
    match_keys = torch.full((num_rows, most), _INT64_MAX, dtype=torch.int64, device=dev)
    match_keys[rows, slot] = keys[rows, cols]
    match_keys = match_keys.sort(dim=1).values  # unused slots (max key) sort last
    # bucket b of an entry = number of matches ordered strictly before it; the kept entries
    # in buckets 0..k are exactly those ordered at or before match k: their count is its rank.
    bucket = torch.searchsorted(match_keys, keys)
    bucket += torch.arange(num_rows, device=dev)[:, None] * (most + 1)  # row r: own buckets
    kept = bucket[~excluded] if excluded is not None else bucket.view(-1)
    counts = torch.bincount(kept, minlength=num_rows * (most + 1)).view(num_rows, most + 1)
    ranks = counts.cumsum(1)[:, :most]
    return num_pos, ranks[torch.arange(most, device=dev)[None, :] < num_pos[:, None]]


def _binning(num_rows, num_cols, device):
    """(bins per row, rows per pass) of _count_before: about _PER_BIN entries a bin (few to
    compare one by one), within the pass's bins, and on the CPU within _CPU_ELEMENTS entries."""
    bins = max(16, min(num_cols // _PER_BIN, _PASS_BINS - _MARGIN_BINS))
    rows = max(1, _PASS_BINS // (bins + _MARGIN_BINS))
    if device.type == 'cpu':
        rows = min(rows, max(1, _CPU_ELEMENTS // max(num_cols, 1)))
    return bins, min(num_rows, rows)


def _row_value_order(rows, vals):
    """Permutation ordering row-major pairs by (row, value, column)."""
    order = torch.sort(vals, stable=True).indices
    return order[torch.sort(rows[order], stable=True).indices]


def _count_before(dist, named_row, named_col, named_val, work, bins):
    """For each named entry (named_row, named_col), of value named_val, of a [rows, G] block:
    how many entries of its row come before it in (value, column) order. work: (float,
    int32) buffers of at least rows * G elements, reused so that no pass allocates memory.
    bins: bins spanning a row's named values (rows * (bins + 5) must stay below 2^22)."""
    num_rows, num_cols = dist.shape
    dev = dist.device
    width = bins + _MARGIN_BINS  # a row's bins: 0 below, 1..bins+3 across, bins+4 above
    lowest = torch.full((num_rows,), float('inf'), dtype=dist.dtype, device=dev)
    lowest = lowest.scatter_reduce(0, named_row, named_val, 'amin')
    highest = torch.full_like(lowest, -float('inf')).scatter_reduce(0, named_row, named_val, 'amax')
    has_named = lowest <= highest  # rows without a named entry get the range 0..0
    lowest, highest = torch.where(has_named, lowest, 0), torch.where(has_named, highest, 0)
    # the span mapped onto `bins`: positive even for a constant row (all named values equal),
    # where it is the value's size, or 1 at 0, so that the scale below stays finite
    span = torch.where(highest > lowest, highest - lowest,
                       torch.where(lowest != 0, lowest.abs(), 1))
    # a monotone map of the distances to the bins of their row: lowest -> 2, highest ->
    # bins + 2, shifted to the row's own range (row r: r * width .. + bins + 4, integers that
    # float32 holds exactly); the named entries' bins are read back from the same tensor, so
    # rounding cannot put an entry on the wrong side of one of them. The bin of margin on
    # each side keeps the rounding of the map from putting the lowest or highest named
    # entry among all the entries below or above (correct still, but many to compare)
    scale = bins / span
    start = torch.arange(num_rows, device=dev, dtype=dist.dtype)[:, None] * width
    scaled = work[0][:num_rows * num_cols].view(num_rows, num_cols)
    if float((lowest.abs() * scale).max()) < 2 ** 20:  # d * scale is exact to well under a bin
        torch.addcmul(start + 2 - (lowest * scale)[:, None], dist, scale[:, None], out=scaled)
    else:  # subtract first: no cancellation when the distances sit far from 0
        torch.mul(torch.sub(dist, lowest[:, None], out=scaled), scale[:, None], out=scaled)
        scaled += start + 2
    scaled.nan_to_num_(nan=float('inf')).clamp_(start, start + bins + 4)  # nan: above all
    bin_of = work[1][:num_rows * num_cols].view(-1).copy_(scaled.view(-1))  # floor: all >= 0
    named_flat = named_row * num_cols + named_col
    named_bin = bin_of[named_flat].long()
    hist = torch.bincount(bin_of, minlength=num_rows * width)
    # entries in lower bins of the row: the count before the named bin, less the entries of
    # the rows before it (each row has num_cols entries, all in its own bins)
    below = (hist.cumsum(0) - hist)[named_bin] - named_row * num_cols
    # the candidates: every entry sharing a bin with a named entry (named ones included)
    shares_bin = torch.zeros(num_rows * width, dtype=torch.bool, device=dev)
    shares_bin[named_bin] = True
    cand = shares_bin.index_select(0, bin_of).nonzero().squeeze(1)  # flat indices, ascending
    cand_bin = bin_of[cand]
    order = torch.sort(dist.view(-1)[cand] + 0.0, stable=True).indices
    order = order[torch.sort(cand_bin[order], stable=True).indices]  # by (bin, value, column)
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=dev)
    # the candidates of its bin ordered before a candidate: its position in that order less
    # the position of its bin's first candidate
    within = position - torch.searchsorted(cand_bin[order], cand_bin)
    return below + within[torch.searchsorted(cand, named_flat)]  # named entries are candidates


def match_ranks(dist, q_pids, g_index, excluded=None):
    """Ranks of the kept true matches of each row of a [c, G] distance block.

    q_pids: [c] identities; g_index: KeyIndex of the gallery identities; excluded: (rows,
    cols) pairs of entries the protocol ignores, or None. Returns (num_pos [c], ranks
    [sum(num_pos)]) as sorted_match_ranks does.
    """
    num_rows, num_cols = dist.shape
    dev = dist.device
    if dist.dtype not in (torch.float32, torch.float64):
        dist = dist.float()
    dist = dist.contiguous()
    # the named entries: same identity or ignored, as row-major (rows, cols) pairs
    same = g_index.pairs(q_pids)
    if excluded is not None and excluded[0].numel():
        rows, cols = union(same, excluded, num_cols=num_cols)
        flat = rows * num_cols + cols
        is_excl = torch.isin(flat, excluded[0] * num_cols + excluded[1])
        is_pos = torch.isin(flat, same[0] * num_cols + same[1]) & ~is_excl
    else:
        rows, cols = same
        is_excl = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
        is_pos = ~is_excl
    num_pos = torch.bincount(rows[is_pos], minlength=num_rows)
    pos_idx = is_pos.nonzero().squeeze(1)  # the kept matches among the named pairs, ascending
    if pos_idx.numel() == 0:
        return num_pos, torch.zeros(0, dtype=torch.int64, device=dev)
    vals = dist[rows, cols] + 0.0
    if not torch.isfinite(vals[pos_idx]).all():
        mask = pairs_to_mask(excluded, num_rows, num_cols) if excluded is not None else None
        return sorted_match_ranks(dist, q_pids, g_index.keys, mask)
    fused = _fused_cpu_count(dist)
    if fused is not None:
        before = fused(dist, rows[pos_idx], cols[pos_idx], vals[pos_idx])
    else:
        before = _count_before_in_passes(dist, rows, cols, vals, pos_idx)
    return num_pos, _less_ignored(before, rows, vals, is_pos, is_excl, pos_idx)


def _fused_cpu_count(dist):
    """utils.ranking_cpu.count_before for a large float32 block on the CPU, else None."""
    if dist.device.type != 'cpu' or dist.dtype != torch.float32 or dist.numel() < FUSED_MIN_ENTRIES:
        return None
    try:
        from .ranking_cpu import count_before
    except ImportError:  # requirements.txt has numba; without it, torch's passes (same counts)
        return None
    return count_before


def _count_before_in_passes(dist, rows, cols, vals, pos_idx):
    """_count_before over the block, a pass of rows at a time (pos_idx: the matches among the
    named pairs, whose counts are returned)."""
    num_rows, num_cols = dist.shape
    dev = dist.device
    before = torch.empty(pos_idx.numel(), dtype=torch.int64, device=dev)
    pos_row = rows[pos_idx]  # ascending: pairs are row-major
    bins, step = _binning(num_rows, num_cols, dev)
    work = (torch.empty(step * num_cols, dtype=dist.dtype, device=dev),
            torch.empty(step * num_cols, dtype=torch.int32, device=dev))
    # the kept matches of rows first..first+step are pos_idx[start:end]
    bounds = torch.searchsorted(pos_row, torch.arange(0, num_rows + step, step, device=dev)).tolist()
    for first, start, end in zip(range(0, num_rows, step), bounds[:-1], bounds[1:]):
        if end > start:
            sel = pos_idx[start:end]
            before[start:end] = _count_before(dist[first:first + step], rows[sel] - first,
                                              cols[sel], vals[sel], work, bins)
    return before


def _less_ignored(before, rows, vals, is_pos, is_excl, pos_idx):
    """The ranks of the matches: one more than the entries before them (`before`, in pos_idx
    order) that the protocol keeps."""
    # kept entries before a match = all entries before it - ignored entries before it
    order = _row_value_order(rows, vals)
    excl = is_excl[order].long()
    excl_before = excl.cumsum(0) - excl  # ignored pairs before each, over all rows so far
    row_sorted = rows[order]
    # subtract the count at the row's start (searchsorted: the first pair of each row)
    excl_before -= excl_before[torch.searchsorted(row_sorted, row_sorted)]
    keep = is_pos[order]
    which = torch.searchsorted(pos_idx, order[keep])  # where each match's `before` is
    return before[which] - excl_before[keep] + 1


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
