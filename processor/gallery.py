"""A searchable gallery: features saved to / loaded from .npz, and top-k search.

The .npz written by tools/extract_features.py holds 'features' [N, D] float32, 'paths',
'pids' and 'camids' (when known), and 'weight', 'method', 'input_size' (what made them).
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from utils.atomic import atomic_write
from utils.distance import BLOCK, chunk_rows, distance_chunks
from utils.errors import ReIDError
from utils.finite import check_finite
from utils.memory import rows_within
from utils.ranking import ORDER_KEY_BYTES, order_keys


@dataclass
class Gallery:
    features: np.ndarray
    paths: list
    pids: Optional[np.ndarray] = None
    camids: Optional[np.ndarray] = None
    weight: str = ''


def save_gallery(path, features, images, extractor):
    """Write features of an ImageList (made by extractor) to path (.npz), atomically."""
    cfg = extractor.cfg
    arrays = dict(features=np.asarray(features, dtype=np.float32), paths=np.asarray(images.paths),
                  weight=np.asarray(extractor.weight), method=np.asarray(cfg.MODEL.METHOD),
                  input_size=np.asarray(cfg.INPUT.SIZE_TEST, dtype=np.int64))
    for name in ('pids', 'camids'):
        if getattr(images, name) is not None:
            arrays[name] = np.asarray(getattr(images, name), dtype=np.int64)
    path = path if path.endswith('.npz') else path + '.npz'
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def load_gallery(path):
    """The Gallery saved at path; a ReIDError naming the file when it cannot be read, is not
    a features file, or holds features that are not finite."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except OSError as err:
        raise ReIDError(f'cannot read features file {path}: {err}') from None
    except Exception as err:  # noqa: BLE001 - a damaged file raises BadZipFile, EOFError,
        # zlib.error, ValueError, tokenize.TokenError...: all mean the same to the user
        raise ReIDError(f'cannot read features file {path} (damaged or not an .npz of '
                        f'tools/extract_features.py): {type(err).__name__}: {err}') from None
    if 'features' not in arrays or 'paths' not in arrays:
        raise ReIDError(f'{path} is not a features file of tools/extract_features.py '
                        '(no features / paths)')
    features, paths = arrays['features'], arrays['paths']
    labels = [arrays[k] for k in ('pids', 'camids') if k in arrays]
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating) or \
            any(a.shape != (len(features),) for a in [paths, *labels]):
        raise ReIDError(f'{path} is damaged: features {features.dtype} {features.shape} for '
                        f'{paths.shape} paths (expected float [N, D], and N paths, pids, camids)')
    paths = [str(p) for p in paths]
    try:
        check_finite(('gallery', features, paths))
    except ReIDError as err:
        raise ReIDError(f'{path}: {err}') from None
    return Gallery(features.astype(np.float32), paths, arrays.get('pids'), arrays.get('camids'),
                   str(arrays.get('weight', '')))


def search(query, gallery, metric='euclidean', topk=10, exclude=None, rows=None,
           memory_budget=None):
    """(indices [Q, k], distances [Q, k]) of the k nearest gallery features of each query by
    TEST.DISTANCE `metric` ('euclidean' is squared, as in evaluation), nearest first, ties
    by gallery index (as evaluation ranks); k is topk, at most G.

    exclude: (query rows, gallery columns), two integer sequences naming the pairs to skip
    (e.g. the query image itself); they rank last, at distance inf. rows: query rows per
    chunk (None: about utils.distance.CHUNK_ELEMENTS distances; rounded up to a multiple of
    utils.distance.BLOCK, the blocks evaluation computes distances in). A chunk holds its
    rows x G float32 distances and, while it is ranked, their int64 sort keys (16 more
    bytes per distance with the temporaries). memory_budget: bytes the chunks may take; fewer
    rows per chunk (and per matrix product) when the default ones do not fit.
    """
    q = torch.as_tensor(np.asarray(query), dtype=torch.float32)
    g = torch.as_tensor(np.asarray(gallery), dtype=torch.float32)
    if q.shape[1] != g.shape[1]:
        raise ReIDError(f'query features have {q.shape[1]} dimensions, the gallery\'s '
                        f'{g.shape[1]}: they come from different models')
    if topk < 1:
        raise ReIDError(f'the number of gallery images to list must be at least 1, not {topk}')
    check_finite(('query', q, None), ('gallery', g, None))
    k = min(topk, g.shape[0])
    skip_q, skip_g = (torch.as_tensor(np.asarray(e, dtype=np.int64)).reshape(-1)
                      for e in (exclude if exclude is not None else ([], [])))
    order, dist = torch.zeros(len(q), k, dtype=torch.int64), torch.zeros(len(q), k)
    block = BLOCK
    if memory_budget is not None:
        fit = rows_within(memory_budget - 2 * order.nbytes, (4 + ORDER_KEY_BYTES) * len(g),
                          'query x gallery distances and their sort keys')
        rows = min(rows or chunk_rows(len(g)), fit)
        block = min(BLOCK, rows)
    for start, end, chunk in distance_chunks(q, g, metric, rows=rows, block=block, reuse=True):
        here = (skip_q >= start) & (skip_q < end)
        chunk[skip_q[here] - start, skip_g[here]] = float('inf')
        # keys (distance, gallery index): topk ranks ties by gallery index, as evaluation does
        nearest = order_keys(chunk).topk(k, dim=1, largest=False).values & 0xFFFFFFFF
        order[start:end] = nearest.cpu()
        dist[start:end] = torch.gather(chunk, 1, nearest).cpu()
    return order.numpy(), dist.numpy()
