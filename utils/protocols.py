"""Evaluation protocols: which gallery entries each query ignores, and what is reported.

Every protocol streams the query x gallery distances chunk by chunk (plain or re-ranked),
turns each chunk into the ranks of the true matches (utils.ranking) and keeps the whole
distance matrix only for the visualiser / TEST.DIST_MAT.

- standard  (Market1501, MSMT17, DukeMTMC, VeRi): drop same identity + same camera;
  queries without a valid match are skipped.
- vehicleid: all test images pooled; per seeded trial one random image per identity is
  the gallery and the rest are queries; no camera filtering (VehicleID has no cameras, and
  TransReID / CLIP-ReID / fast-reid give query and gallery different camids so the
  standard filter never fires); CMC and mAP averaged over the trials.
- animal    (yak, elephant): the query's own image is dropped by identity (same path, or
  the same index when the gallery is the query set), never "the nearest one"; no camera
  filtering; AP standard or trapezoid.
- atrw: see utils.atrw.
"""
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from .distance import distance_chunks
from .errors import ReIDError
from .ranking import RankStats
from .reranking import re_ranking_chunks

PROTOCOLS = ('standard', 'vehicleid', 'animal', 'atrw')


@dataclass
class Split:
    """Features and labels of one side (query or gallery)."""
    feats: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    paths: Optional[list] = None

    def __len__(self):
        return len(self.pids)

    def take(self, index):
        paths = None if self.paths is None else [self.paths[i] for i in index]
        t = torch.as_tensor(index, dtype=torch.long, device=self.feats.device)
        return Split(self.feats[t], self.pids[index], self.camids[index], paths)


@dataclass
class DistanceSpec:
    """How query x gallery distances are made: TEST.DISTANCE, or re-ranking when rerank is set."""
    metric: str = 'euclidean'
    rerank: Optional[dict] = None  # k1, k2, lambda_value, dist
    rows: Optional[int] = None  # query rows per chunk (None: automatic)

    def chunks(self, qf, gf):
        if self.rerank:
            return re_ranking_chunks(qf, gf, rows=self.rows, **self.rerank)
        return distance_chunks(qf, gf, self.metric, rows=self.rows)


@dataclass
class EvalResult:
    """What an evaluation produced. Fractions in 0..1."""
    cmc: np.ndarray
    mAP: float
    metrics: dict
    protocol: str = 'standard'
    ap_mode: str = 'standard'
    distmat: Optional[np.ndarray] = None
    q_pids: Optional[np.ndarray] = None
    g_pids: Optional[np.ndarray] = None
    q_camids: Optional[np.ndarray] = None
    g_camids: Optional[np.ndarray] = None
    q_paths: Optional[list] = None
    g_paths: Optional[list] = None
    excluded: Optional[Callable] = None  # (start, end) -> [end-start, G] bool of ignored entries
    extra: dict = field(default_factory=dict)

    def summary(self):
        """Ordered name -> value of what to log."""
        return OrderedDict(self.metrics)

    def excluded_mask(self, q):
        """[G] bool: gallery entries the protocol ignores for query q."""
        if self.excluded is None:
            return np.zeros(len(self.g_pids), dtype=bool)
        return self.excluded(q, q + 1)[0].cpu().numpy()


def scan(spec, q, g, excluded, keep_distmat=True):
    """RankStats of every query (gallery g=None: the query set itself) and the distance matrix."""
    gal = q if g is None else g
    distmat = np.empty((len(q), len(gal)), dtype=np.float32) if keep_distmat else None

    def chunks():
        for start, end, dist in spec.chunks(q.feats, None if g is None else g.feats):
            if distmat is not None:
                distmat[start:end] = dist.cpu().numpy()
            yield start, end, dist

    stats = RankStats.collect(chunks(), torch.as_tensor(q.pids), torch.as_tensor(gal.pids), excluded)
    return stats, distmat


def scores(stats, max_rank, ap_mode='standard'):
    """(cmc float32 [max_rank], mAP) over the queries with at least one valid match."""
    valid = stats.num_pos > 0
    if not valid.any():
        raise ReIDError('no query has a valid match in the gallery: check the query/gallery split')
    cmc = stats.cmc_counts(max_rank).astype(np.float32) / float(valid.sum())
    return cmc, float(np.mean(stats.average_precision(ap_mode)[valid]))


def rank_metrics(cmc, mAP, map_name='mAP'):
    out = OrderedDict([(map_name, mAP)])
    out.update((f'Rank-{r}', float(cmc[r - 1])) for r in (1, 5, 10) if r <= len(cmc))
    return out


def _result(protocol, cmc, mAP, metrics, q, gal, distmat, excluded, **kw):
    return EvalResult(cmc=cmc, mAP=mAP, metrics=metrics, protocol=protocol, distmat=distmat,
                      q_pids=q.pids, g_pids=gal.pids, q_camids=q.camids, g_camids=gal.camids,
                      q_paths=q.paths, g_paths=gal.paths, excluded=excluded, **kw)


def evaluate_standard(spec, q, g, max_rank=50):
    qp, gp = torch.as_tensor(q.pids), torch.as_tensor(g.pids)
    qc, gc = torch.as_tensor(q.camids), torch.as_tensor(g.camids)

    def excluded(s, e):
        return (gp[None, :] == qp[s:e, None]) & (gc[None, :] == qc[s:e, None])

    stats, distmat = scan(spec, q, g, excluded)
    cmc, mAP = scores(stats, max_rank)
    return _result('standard', cmc, mAP, rank_metrics(cmc, mAP), q, g, distmat, excluded)


def vehicleid_draw(pids, rng):
    """(query indices, gallery indices): one uniformly drawn image per identity is the gallery."""
    perm = rng.permutation(len(pids))
    _, first = np.unique(pids[perm], return_index=True)
    gallery = np.sort(perm[first])
    return np.setdiff1d(np.arange(len(pids)), gallery), gallery


def evaluate_vehicleid(spec, test, max_rank=50, trials=10, seed=0):
    """Mean CMC / mAP over `trials` seeded draws of a one-image-per-identity gallery."""
    rng = np.random.default_rng(seed)
    cmcs, maps, draws, first = [], [], [], None
    for t in range(trials):
        qi, gi = vehicleid_draw(test.pids, rng)
        q, g = test.take(qi), test.take(gi)
        stats, distmat = scan(spec, q, g, None, keep_distmat=t == 0)
        cmc, mAP = scores(stats, max_rank)
        cmcs.append(cmc)
        maps.append(mAP)
        draws.append(gi)
        if t == 0:
            first = (q, g, distmat)
    cmc, mAP = np.mean(cmcs, axis=0).astype(np.float32), float(np.mean(maps))
    q, g, distmat = first
    return _result('vehicleid', cmc, mAP, rank_metrics(cmc, mAP), q, g, distmat, None,
                   extra={'trial_mAP': maps, 'gallery_indices': draws})


def evaluate_animal(spec, q, g, max_rank=50, ap_mode='trapezoid'):
    """Query images are part of the gallery: each query ignores exactly its own image."""
    if len(g) == 0:  # the gallery is the query set: own image = same index
        g_side, gal = None, q

        def excluded(s, e):
            cols = torch.arange(len(q))
            return cols[None, :] == torch.arange(s, e)[:, None]
    else:
        if q.paths is None or g.paths is None:
            raise ReIDError('the animal protocol needs image paths (update((feat, pids, camids, '
                            'paths))) to recognise the query image inside the gallery')
        ids = {p: i for i, p in enumerate(dict.fromkeys(list(q.paths) + list(g.paths)))}
        q_ids = torch.tensor([ids[p] for p in q.paths])
        g_ids = torch.tensor([ids[p] for p in g.paths])
        g_side, gal = g, g

        def excluded(s, e):
            return g_ids[None, :] == q_ids[s:e, None]

    stats, distmat = scan(spec, q, g_side, excluded)
    cmc, mAP = scores(stats, max_rank, ap_mode)
    return _result('animal', cmc, mAP, rank_metrics(cmc, mAP, f'mAP({ap_mode})'), q, gal,
                   distmat, excluded, ap_mode=ap_mode)
