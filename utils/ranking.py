"""Where each query's true matches land in its ranking, without sorting whole rows.

Every protocol reduces to the same question: after dropping the gallery entries the
protocol ignores for a query (same identity and camera, the query's own image, junk...),
at which 1-based ranks do the true matches appear when the gallery is ordered by
ascending distance, ties broken by gallery index (a stable sort)? CMC and AP follow.

The rank of a match is the number of kept entries ordered before or at it, so instead of
sorting a row of G distances we sort its few matches and count the kept entries that fall
between consecutive matches (searchsorted + bincount). Exact, including ties, and about
three times faster than a stable argsort on the CPU. Works on any torch device.
"""
from dataclasses import dataclass

import numpy as np
import torch

_INT64_MAX = torch.iinfo(torch.int64).max


def order_keys(dist):
    """int64 keys, one per entry, whose ascending order is the stable ascending order of each row."""
    if dist.dtype == torch.float64:
        narrow = dist.float()
        if torch.equal(narrow.double(), dist):  # float32 values stored as float64: fast path
            dist = narrow
    if dist.dtype in (torch.float16, torch.bfloat16, torch.float32):
        bits = (dist.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
        bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # IEEE order -> integer order
        cols = torch.arange(dist.shape[1], device=dist.device)
        return (bits.long() << 32) | cols
    order = torch.sort(dist, dim=1, stable=True).indices
    positions = torch.arange(dist.shape[1], device=dist.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def match_ranks(dist, q_pids, g_pids, excluded=None):
    """Ranks of the kept true matches of each row of a [c, G] distance block.

    excluded: [c, G] bool of entries the protocol ignores (not counted in any rank), or None.
    Returns (num_pos [c] int64, ranks [c, m] int64): row r's matches are at ranks
    ranks[r, :num_pos[r]] (1-based, ascending); the rest of the row is padding.
    """
    c, g = dist.shape
    pos = g_pids[None, :] == q_pids[:, None]
    if excluded is not None:
        pos &= ~excluded
    num_pos = pos.sum(1)
    m = int(num_pos.max()) if c else 0
    if m == 0:
        return num_pos, torch.zeros(c, 0, dtype=torch.int64, device=dist.device)
    keys = order_keys(dist)
    rows, cols = pos.nonzero(as_tuple=True)
    slot = torch.arange(rows.numel(), device=dist.device) - (num_pos.cumsum(0) - num_pos)[rows]
    seq = torch.full((c, m), _INT64_MAX, dtype=torch.int64, device=dist.device)
    seq[rows, slot] = keys[rows, cols]
    seq = seq.sort(dim=1).values
    # bucket b of an entry = number of matches ordered strictly before it; a match's own
    # bucket is its index among the matches, so the kept entries in buckets 0..k are
    # exactly those ordered at or before match k: their count is match k's rank.
    bucket = torch.searchsorted(seq, keys)
    bucket += torch.arange(c, device=dist.device)[:, None] * (m + 1)
    kept = bucket[~excluded] if excluded is not None else bucket.view(-1)
    counts = torch.bincount(kept, minlength=c * (m + 1)).view(c, m + 1)
    ranks = counts.cumsum(1)[:, :m]
    ranks[torch.arange(m, device=dist.device)[None, :] >= num_pos[:, None]] = 0
    return num_pos, ranks


@dataclass
class RankStats:
    """Ranks of the true matches of every query (concatenated, query-major)."""
    num_pos: np.ndarray  # [Q] number of kept true matches
    ranks: np.ndarray  # [sum(num_pos)] 1-based ranks, ascending within each query

    @classmethod
    def collect(cls, chunks, q_pids, g_pids, excluded_fn=None):
        """Run match_ranks over (start, end, dist_rows) chunks of the query x gallery matrix."""
        nums, ranks = [], []
        for start, end, dist in chunks:
            excl = excluded_fn(start, end) if excluded_fn is not None else None
            dev = dist.device
            num, rk = match_ranks(dist, q_pids[start:end].to(dev), g_pids.to(dev),
                                  None if excl is None else excl.to(dev))
            num, rk = num.cpu().numpy(), rk.cpu().numpy()
            nums.append(num)
            ranks.append(rk[np.arange(rk.shape[1])[None, :] < num[:, None]])
        if not nums:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        return cls(np.concatenate(nums), np.concatenate(ranks))

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
