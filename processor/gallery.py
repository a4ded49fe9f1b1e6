"""A searchable gallery: features saved to / loaded from .npz, and top-k search.

The .npz written by tools/extract_features.py holds 'features' [N, D] float32, 'paths',
'pids' and 'camids' (when known), and 'weight', 'method', 'input_size' (what made them).
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from utils.atomic import atomic_write
from utils.distance import distance_chunks
from utils.errors import ReIDError


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
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise ReIDError(f'cannot read features file {path}: {err}') from None
    if 'features' not in arrays or 'paths' not in arrays:
        raise ReIDError(f'{path} is not a features file of tools/extract_features.py '
                        '(no features / paths)')
    return Gallery(arrays['features'].astype(np.float32), [str(p) for p in arrays['paths']],
                   arrays.get('pids'), arrays.get('camids'), str(arrays.get('weight', '')))


def search(query, gallery, metric='euclidean', topk=10, exclude=None):
    """(indices [Q, k], distances [Q, k]) of the k nearest gallery features of each query by
    TEST.DISTANCE `metric` ('euclidean' is squared, as in evaluation). exclude: [Q, G] bool
    of entries to skip (e.g. the query image itself); they rank last, at distance inf."""
    q = torch.as_tensor(np.asarray(query), dtype=torch.float32)
    g = torch.as_tensor(np.asarray(gallery), dtype=torch.float32)
    if q.shape[1] != g.shape[1]:
        raise ReIDError(f'query features have {q.shape[1]} dimensions, the gallery\'s '
                        f'{g.shape[1]}: they come from different models')
    dist = torch.cat([chunk for _, _, chunk in distance_chunks(q, g, metric)])  # as evaluation
    if exclude is not None:
        dist[torch.as_tensor(exclude)] = float('inf')
    order = torch.argsort(dist, dim=1, stable=True)[:, :topk]  # ties as in evaluation
    return order.numpy(), torch.gather(dist, 1, order).numpy()
