"""The CPU form of ranking's count: one fused pass over each row, compiled with numba.

utils/ranking._count_before asks, for a few "named" entries of each row of a distance block,
how many entries of their row come before them in (value, column) order. On a GPU torch's
separate passes (map to bins, histogram, gather the candidates) are memory-bound and fast;
on a CPU each pass reads the whole block again, and the passes together cost more than the
matrix product that made the distances. numba (a maintained JIT compiler for array loops)
lets one loop do all of it while the row is in cache, with the same answer:

- every entry x goes to bin trunc(clamp((x - low) * scale, -1, bins + 1)) + 1, in 0 ..
  bins + 2, where low .. high spans the row's named values (NaN goes to the top bin). The
  map is monotone (so is every step of it), so an entry in a lower bin than a named entry
  comes before it. A row is binned a tile at a time (a loop the compiler vectorizes), then
  counted;
- the bins are counted, and the entries that share a bin with a named entry (about
  G / bins each) are kept as candidates and compared exactly: value, then column, NaN after
  every number, -0.0 equal to 0.0.

Rows run in parallel (numba's prange). The first call compiles (a few seconds) and the
machine code is cached in __pycache__; a process pays about 0.6 s to import numba and load
it, so utils/ranking uses this module only for large blocks.
"""
import numba
import numpy as np
import torch

_ENTRIES_PER_BIN = 32  # entries a bin, about: a histogram that stays in cache
_TILE = 4096  # entries binned at a time (in cache), then counted


def _jit(**options):
    return numba.njit(cache=True, nogil=True, **options)


def count_before(dist, named_row, named_col, named_val):
    """For each named entry (named_row, named_col) of value named_val (row-major, finite) of a
    float32 CPU [R, G] block: the entries of its row before it in (value, column) order."""
    num_rows, num_cols = dist.shape
    starts = np.searchsorted(named_row.numpy(), np.arange(num_rows + 1))
    bins = max(16, num_cols // _ENTRIES_PER_BIN)
    out = np.empty(named_row.numel(), np.int64)
    _count_rows(dist.contiguous().numpy(), starts, named_col.numpy(), named_val.numpy(), bins,
                out)
    return torch.from_numpy(out)


def load():
    """Compile, or load from the cache, the kernel now (benchmarks time it apart)."""
    dist = torch.zeros(1, 2)
    first = torch.zeros(1, dtype=torch.int64)
    count_before(dist, first, first, dist[0, :1])


@_jit(parallel=True)
def _count_rows(dist, starts, cols, vals, bins, out):
    num_rows, num_cols = dist.shape
    for r in numba.prange(num_rows):
        first, end = starts[r], starts[r + 1]
        if end > first:
            _count_row(dist[r], cols[first:end], vals[first:end], bins, out[first:end])


@_jit()
def _bin(x, low, scale, top):
    """The bin of x: a monotone map, without branches so that a loop of it vectorizes
    (truncation toward 0, the clamps and IEEE subtraction and product are all monotone)."""
    b = (x - low) * scale
    # NaN (x is NaN): after every number (no named entry is in the top bin: it is only
    # counted); testing b, not x, keeps every index in range whatever the arithmetic gave
    b = np.float32(top - 1) if b != b else b
    b = min(max(b, np.float32(-1.0)), np.float32(top - 1))
    return np.int32(b) + 1


@_jit()
def _count_row(row, cols, vals, bins, out):
    named = vals.size
    low, high = vals.min(), vals.max()
    # bins across the named span; 1 when that would not be finite in float32 (a span of a
    # few ulps near 0): the map must stay monotone, at worst with many entries to compare
    scale = np.float32(bins / (high - low)) if high > low else np.float32(1.0)
    if not np.isfinite(scale):
        scale = np.float32(1.0)
    top = bins + 2
    # the named entries in (value, column) order, and the bin of each
    by_col = np.argsort(cols, kind='mergesort')
    order = by_col[np.argsort(vals[by_col], kind='mergesort')]  # -0.0 and 0.0 compare equal
    named_bin = np.empty(named, np.int64)
    for j in range(named):
        named_bin[j] = _bin(vals[order[j]], low, scale, top)
    # the sorted named entries of each bin are order[group_first[b] .. group_end[b]]
    flag = np.zeros(top + 1, np.bool_)
    group_first = np.zeros(top + 1, np.int64)
    group_end = np.zeros(top + 1, np.int64)
    for j in range(named - 1, -1, -1):
        group_first[named_bin[j]] = j
    for j in range(named):
        flag[named_bin[j]] = True
        group_end[named_bin[j]] = j + 1
    hist = np.zeros(top + 1, np.int32)
    cand = np.empty(row.size, np.int64)
    num_cand = 0
    tile = np.empty(_TILE, np.int32)
    for start in range(0, row.size, _TILE):
        size = min(_TILE, row.size - start)
        for i in range(size):  # vectorized
            tile[i] = _bin(row[start + i], low, scale, top)
        for i in range(size):
            b = tile[i]
            hist[b] += 1
            if flag[b]:
                cand[num_cand] = start + i
                num_cand += 1
    # entries in lower bins: a running sum up to each named bin
    below = np.empty(named, np.int64)
    total, b_done = 0, 0
    for j in range(named):
        while b_done < named_bin[j]:
            total += hist[b_done]
            b_done += 1
        below[j] = total
    # each candidate comes before the named entries of its bin that are greater than it:
    # +1 from the first of those (a binary search) to the end of the bin's group
    diff = np.zeros(named + 1, np.int64)
    for i in range(num_cand):
        c = cand[i]
        x = row[c]
        b = _bin(x, low, scale, top)
        # the first named entry of the bin greater than (x, c) in (value, column) order
        left, right = group_first[b], group_end[b]
        while left < right:
            mid = (left + right) // 2
            v = vals[order[mid]]
            if v < x or (v == x and cols[order[mid]] <= c):
                left = mid + 1
            else:
                right = mid
        diff[left] += 1
        diff[group_end[b]] -= 1
    running = 0
    for j in range(named):
        running += diff[j]
        out[order[j]] = below[j] + running
