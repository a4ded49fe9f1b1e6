"""Nearest neighbours of every stacked query+gallery feature, from one symmetric pass.

The (Q+G)^2 initial distance matrix of re-ranking is symmetric, so it is computed as
blocks D[I, J] for I <= J only (half the matrix products), and each off-diagonal block
serves both its row block's and its column block's neighbour lists and row maxima. Every
pair is computed once, by one block, so the matrix used is exactly symmetric off the
diagonal blocks; its query x gallery part can be kept on the way (the stash), so the
final distances use the same bits and are never computed again.

The k nearest of each row are kept by a running threshold: a row's k-th smallest distance
so far (first taken from its own diagonal block) is an upper bound of its final one, so
only the entries at or below it (a few per row and block) are merged into its list.
Neighbours are ordered by (distance, index): ties are broken by index, on every device.
"""
import torch
import torch.nn.functional as F

from .distance import as_tensor

INITIAL_DISTANCES = ('euclidean', 'cosine_sq')
BLOCK = {'cpu': 2048, 'cuda': 8192}  # rows per block of the pass
_EMPTY = torch.iinfo(torch.int64).max


def _monotone(bits):
    """int32 float bits <-> int32 whose signed order is the float order (an involution)."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def pack(vals, cols):
    """int64 keys ordered as (value, column): float32 value bits above, column below."""
    return (_monotone((vals.float() + 0.0).view(torch.int32)).long() << 32) | cols


def unpack_values(keys):
    """The float32 values of pack()'s keys; +inf for empty slots."""
    vals = _monotone((keys >> 32).to(torch.int32)).view(torch.float32)
    return vals.masked_fill(keys == _EMPTY, float('inf'))


def _stack(q, g):
    """torch.cat([q, g]), without a copy when g already follows q in memory (the evaluator's
    query and gallery are two views of one tensor)."""
    if (q.is_contiguous() and g.is_contiguous() and q.dtype == g.dtype and q.shape[1:] == g.shape[1:]
            and g.data_ptr() == q.data_ptr() + q.numel() * q.element_size()
            and q.untyped_storage().data_ptr() == g.untyped_storage().data_ptr()):
        size = (q.shape[0] + g.shape[0],) + q.shape[1:]
        return torch.as_strided(q, size, q.stride(), q.storage_offset())
    return torch.cat([q, g])


class StackedFeatures:
    """Query+gallery features (galFea=None: the queries alone) and their initial distances.

    dist 'euclidean': squared euclidean, as TransReID / CLIP-ReID; 'cosine_sq': (2 - 2 cos)^2
    on L2-normalised features, the animal code's variant. Blocks are aligned to multiples of
    `block`, so a distance is always computed by the same block, whoever asks.
    """

    def __init__(self, probFea, galFea=None, dist='euclidean', block=None):
        if dist not in INITIAL_DISTANCES:
            raise ValueError(f'unknown re-ranking distance {dist!r}; use one of {INITIAL_DISTANCES}')
        q = as_tensor(probFea)
        feats = q if galFea is None else _stack(q, as_tensor(galFea).to(q.device))
        if not bool(torch.isfinite(feats).all()):
            raise ValueError('re-ranking needs finite features (some hold NaN or inf)')
        self.feats = F.normalize(feats, dim=1) if dist == 'cosine_sq' else feats
        self.sq = self.feats.pow(2).sum(1)
        self.dist = dist
        self.block = block or BLOCK.get(feats.device.type, BLOCK['cuda'])
        self.n, self.num_query = feats.shape[0], q.shape[0]
        self.gal_start = 0 if galFea is None else self.num_query

    @property
    def device(self):
        return self.feats.device

    def span(self, index):
        b = self.block
        return index * b, min((index + 1) * b, self.n)

    @property
    def num_blocks(self):
        return -(-self.n // self.block)

    def pair_distances(self, i, j):
        """Initial distances of the pairs (i[p], j[p]) (gathered dot products)."""
        dot = (self.feats[i] * self.feats[j]).sum(1)
        if self.dist == 'euclidean':
            return self.sq[i] + self.sq[j] - 2 * dot
        return (2 - 2 * dot).square()

    def distance_block(self, bi, bj, out=None):
        """D[I, J] of block indices bi <= bj (written to `out`, a large enough buffer, if given)."""
        (i0, i1), (j0, j1) = self.span(bi), self.span(bj)
        a, b = self.feats[i0:i1], self.feats[j0:j1]
        if out is not None:
            out = out[:(i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
        if self.dist == 'euclidean':
            d = torch.add(self.sq[i0:i1, None], self.sq[None, j0:j1], out=out)
            return d.addmm_(a, b.t(), alpha=-2)
        return torch.mm(a, b.t(), out=out).mul_(-2).add_(2).square_()  # (2 - 2 cos)^2


class NeighbourLists:
    """The k nearest of every row ((distance, index) order, itself usually first) and each
    row's largest distance, from one pass over the upper block triangle.

    stash: an optional [num_query, num_gallery] float32 tensor that receives the query x
    gallery distances on the way (the pass's own bits), so nobody computes them again.
    """

    def __init__(self, stacked, k, stash=None):
        self.k = k = min(k, stacked.n)
        self.stacked, self.stash = stacked, stash
        n, dev = stacked.n, stacked.device
        self.keys = torch.full((n, k), _EMPTY, dtype=torch.int64, device=dev)
        self.bound = torch.full((n,), float('inf'), device=dev)
        self.rowmax = torch.full((n,), -float('inf'), device=dev)
        nb = stacked.num_blocks
        size = min(stacked.block, n) ** 2
        buffers = [torch.empty(size, device=dev) for _ in range(2)]  # distances, thresholds
        for b in range(nb):  # diagonal blocks first: a first bound for every row
            i0, i1 = stacked.span(b)
            d = stacked.distance_block(b, b, buffers[0])
            self._stash_block(d, i0, i1, i0, i1)
            self.rowmax[i0:i1] = d.amax(1)
            if i1 - i0 >= k:
                self.bound[i0:i1] = d.topk(k, dim=1, largest=False).values[:, -1]
            rows, cols = (d <= self.bound[i0:i1, None]).nonzero(as_tuple=True)
            self._merge(i0, i1, rows, i0 + cols, d[rows, cols])
        for bi in range(nb):
            i0, i1 = stacked.span(bi)
            for bj in range(bi + 1, nb):
                j0, j1 = stacked.span(bj)
                d = stacked.distance_block(bi, bj, buffers[0])
                self._stash_block(d, i0, i1, j0, j1)
                self._stash_block(d.t(), j0, j1, i0, i1)
                torch.maximum(self.rowmax[i0:i1], d.amax(1), out=self.rowmax[i0:i1])
                torch.maximum(self.rowmax[j0:j1], d.amax(0), out=self.rowmax[j0:j1])
                bound_i, bound_j = self.bound[i0:i1], self.bound[j0:j1]
                either = buffers[1][:d.numel()].view_as(d)  # a row's or a column's bound
                torch.maximum(bound_i[:, None], bound_j[None, :], out=either)
                r, c = torch.le(d, either).nonzero(as_tuple=True)
                v = d[r, c]
                mine = v <= bound_i[r]
                self._merge(i0, i1, r[mine], j0 + c[mine], v[mine])
                theirs = (v <= bound_j[c]).nonzero().squeeze(1)
                theirs = theirs[torch.sort(c[theirs], stable=True).indices]  # by row of J
                self._merge(j0, j1, c[theirs], i0 + r[theirs], v[theirs])
        if bool((self.keys == _EMPTY).any()):  # finite features whose squares overflow
            raise ValueError('re-ranking distances are NaN: the features are too large')
        self.index = self.keys & 0xFFFFFFFF
        self.distances = unpack_values(self.keys)

    def _stash_block(self, d, i0, i1, j0, j1):
        """Copy the query x gallery part of block d (rows i0..i1, columns j0..j1) to the stash."""
        if self.stash is None:
            return
        q, g0 = self.stacked.num_query, self.stacked.gal_start
        r1, c0 = min(i1, q), max(j0, g0)
        if i0 < r1 and c0 < j1:
            self.stash[i0:r1, c0 - g0:j1 - g0] = d[:r1 - i0, c0 - j0:]

    def _merge(self, r0, r1, rows, cols, vals):
        """Merge candidates (rows relative to r0, sorted) into the lists of rows r0..r1."""
        if rows.numel() == 0:
            return
        k = self.k
        counts = torch.bincount(rows, minlength=r1 - r0)
        live = counts.nonzero().squeeze(1)
        width = int(counts.max())
        slot = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
        where = torch.cumsum(counts > 0, 0) - 1  # position of each live row among them
        dense = torch.full((live.numel(), k + width), _EMPTY, dtype=torch.int64, device=rows.device)
        dense[:, :k] = self.keys[r0 + live]
        dense[where[rows], k + slot] = pack(vals, cols)
        best = dense.topk(k, dim=1, largest=False).values
        self.keys[r0 + live] = best
        self.bound[r0 + live] = unpack_values(best[:, -1])
