"""Query x gallery distances, produced in row chunks so no caller has to hold more than it wants.

Distances are always computed in blocks of BLOCK rows aligned to absolute row indices and
then grouped into chunks: the bits of a distance never depend on how a caller chunks, so
chunked and whole-matrix evaluation give identical results.
"""
import torch
import torch.nn.functional as F

BLOCK = 1024  # rows per distance matmul (smaller blocks make slower matrix products)
CHUNK_ELEMENTS = 1 << 23  # about this many distances per chunk handed to callers

METRICS = ('euclidean', 'cosine')


def as_tensor(x, dtype=torch.float32):
    """A torch tensor on the input's device (numpy arrays and lists go to the CPU)."""
    if torch.is_tensor(x):
        return x.detach().to(dtype)
    return torch.as_tensor(x, dtype=dtype)


def chunk_rows(num_cols, block=BLOCK, elements=CHUNK_ELEMENTS):
    """Rows per chunk: a multiple of `block` holding about `elements` entries."""
    return block * max(1, elements // max(1, num_cols * block))


def distance_block(a, b, metric, b_sq=None, out=None):
    """[len(a), len(b)] distances (written to `out` when given). 'euclidean' is squared, as
    in TransReID/CLIP-ReID (ranking is the same as with the root); 'cosine' is 1 - cosine
    similarity on features the caller has L2-normalised."""
    if metric == 'euclidean':
        if b_sq is None:
            b_sq = b.pow(2).sum(1)
        norms = torch.add(a.pow(2).sum(1, keepdim=True), b_sq[None, :], out=out)
        return norms.addmm_(a, b.t(), alpha=-2)
    if metric == 'cosine':
        return torch.mm(a, b.t(), out=out).neg_().add_(1)
    raise ValueError(f'unknown distance {metric!r}; use one of {METRICS}')


def prepare(feats, metric):
    return F.normalize(feats, dim=1) if metric == 'cosine' else feats


def distance_chunks(qf, gf, metric='euclidean', rows=None, block=BLOCK, out=None, queries=None,
                    reuse=False):
    """Yield (start, end, [end - start, G] float32 distances) over the queries.

    gf=None means the gallery is the query set itself. rows: rows per chunk (rounded up to
    a multiple of `block`); None picks a size holding about CHUNK_ELEMENTS distances.
    queries: the (first, end) query rows to yield, first a multiple of `block` (all rows by
    default). out: an optional float32 numpy array of those rows that receives every chunk
    (on the CPU the distances are computed in it). reuse: every chunk is computed in one
    buffer, so a chunk is valid only until the next one is asked for (memory: one chunk,
    not the two that a consumer holding the last one while the next is made would keep).
    """
    qf = prepare(as_tensor(qf), metric)  # all rows: a row's bits do not depend on `queries`
    gf = qf if gf is None else prepare(as_tensor(gf).to(qf.device), metric)
    first, last = queries or (0, qf.shape[0])
    g_sq = gf.pow(2).sum(1)
    target = torch.from_numpy(out) if out is not None and qf.device.type == 'cpu' else None
    rows = chunk_rows(gf.shape[0], block) if rows is None else -(-rows // block) * block
    buffer = None
    if reuse and target is None:
        buffer = torch.empty(min(rows, last - first), gf.shape[0], device=qf.device)
    for start in range(first, last, rows):
        end = min(start + rows, last)
        if target is not None:
            chunk = target[start - first:end - first]
        elif buffer is not None:
            chunk = buffer[:end - start]
        else:
            chunk = torch.empty(end - start, gf.shape[0], device=qf.device)
        for b in range(start, end, block):
            rows_out = chunk[b - start:b - start + block]
            distance_block(qf[b:min(b + block, end)], gf, metric, g_sq, out=rows_out)
        if out is not None and target is None:
            out[start - first:end - first] = chunk.cpu().numpy()
        yield start, end, chunk


def matrix_chunks(distmat, rows=None):
    """Yield (start, end, rows) of a whole distance matrix (numpy or torch), without copying."""
    dist = torch.as_tensor(distmat) if not torch.is_tensor(distmat) else distmat
    if not dist.is_floating_point():
        dist = dist.double()
    rows = rows or chunk_rows(dist.shape[1], block=1)
    for start in range(0, dist.shape[0], rows):
        yield start, min(start + rows, dist.shape[0]), dist[start:start + rows]
