"""Evaluation protocols: which gallery entries each query ignores, and what is reported.

Every protocol streams the query x gallery distances chunk by chunk (plain or re-ranked),
turns each chunk into the ranks of the true matches (utils.ranking) and keeps the whole
distance matrix only for the visualiser / TEST.DIST_MAT. What a query ignores is given as
(row, column) pairs built on the features' device (utils.pairs), never as dense masks.
A re-ranking sweep (lists of k1 / k2 / lambda) scores every setting in the same pass: the
result is the first setting's, and extra['rerank_sweep'] holds one row per setting.

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
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Callable, Optional

import numpy as np
import torch

from . import distributed as du
from .distance import BLOCK, chunk_rows, distance_chunks
from .errors import ReIDError
from .pairs import KeyIndex, pairs_to_mask
from .memory import rows_within
from .ranking import RANK_BYTES_PER_ENTRY, RankCollector, RankStats, cpu_rank_entries
from .reranking import as_list, re_ranking_sweep

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
    rerank: Optional[dict] = None  # k1, k2, lambda_value (each a number or a list), dist
    rows: Optional[int] = None  # query rows per chunk (None: automatic)
    block: int = BLOCK  # query rows per distance matrix product
    budget: Optional[int] = None  # bytes the chunks may take (None: no limit), see fit()

    def fitted(self, budget, num_gallery, device):
        """A copy whose chunks fit in `budget` bytes for a gallery of num_gallery: today's
        sizes when they fit (the same bits), else fewer query rows per chunk and per matrix
        product."""
        spec = replace(self, budget=budget)
        if self.rerank:
            return spec  # re-ranking sizes its own steps from the budget
        num_gallery = max(1, num_gallery)
        budget -= 64 * num_gallery  # the gallery's identity index and ignored pairs
        # a chunk's distances (4 bytes each) and their ranking: on the CPU in steps of a fixed
        # size (or the chunk, when smaller), elsewhere all at once
        per_entry, step = 4 + RANK_BYTES_PER_ENTRY, 0
        if torch.device(device).type == 'cpu':
            step = RANK_BYTES_PER_ENTRY * cpu_rank_entries(num_gallery)
            if budget >= step + 4 * num_gallery:
                per_entry = 4
            else:
                step = 0
        rows = rows_within(budget - step, per_entry * num_gallery,
                           'query x gallery distances and their ranking')
        if self.rows is None and rows >= chunk_rows(num_gallery, self.block):
            return spec
        spec.block = min(self.block, rows)
        spec.rows = min(self.rows or rows, rows) // spec.block * spec.block
        return spec

    def settings(self):
        """The re-ranking (k1, k2, lambda) of each setting, in chunks()' numbering; [None] without."""
        if not self.rerank:
            return [None]
        r = self.rerank
        return list(product(as_list(r['k1']), as_list(r['k2']), as_list(r['lambda_value'])))

    def chunks(self, qf, gf, out=None, queries=None):
        """Yield (setting, start, end, distances) of query rows start..end, each valid until
        the next is asked for (queries: the
        (first, end) rows to score, all by default); out: an array of those rows, receiving
        setting 0's distances."""
        if self.rerank:
            yield from re_ranking_sweep(qf, gf, rows=self.rows, out=out, queries=queries,
                                        memory_budget=self.budget, **self.rerank)
            return
        for start, end, dist in distance_chunks(qf, gf, self.metric, rows=self.rows,
                                                block=self.block, out=out, queries=queries,
                                                reuse=True):
            yield 0, start, end, dist


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
    # (start, end) -> (rows, cols) pairs, or a bool mask, of the entries the protocol ignores
    excluded: Optional[Callable] = None
    extra: dict = field(default_factory=dict)
    skipped_queries: int = 0  # queries without a valid match: left out of CMC and mAP

    def summary(self):
        """Ordered name -> value of what to log."""
        return OrderedDict(self.metrics)

    def excluded_mask(self, q):
        """[G] bool: gallery entries the protocol ignores for query q."""
        if self.excluded is None:
            return np.zeros(len(self.g_pids), dtype=bool)
        ignored = self.excluded(q, q + 1)
        if not torch.is_tensor(ignored):
            ignored = pairs_to_mask(ignored, 1, len(self.g_pids))
        return ignored[0].cpu().numpy()


def scan(spec, q, g, excluded, keep_distmat=True, observe=None):
    """([RankStats of every query, per setting of spec], setting 0's distance matrix or None);
    gallery g=None: the query set itself. excluded: an excluded(start, end) function, or a
    list of them, one per setting; observe(setting, start, end, dist) sees every chunk first.

    Under torch.distributed every rank scores its own contiguous share of the queries, the
    statistics are gathered in query order on every rank, and only rank 0 receives the
    distance matrix (when keep_distmat)."""
    gal = q if g is None else g
    first, last = query_share(len(q), spec.block)
    # allocated by torch: numpy asks for transparent huge pages, and zeroing them on first
    # touch made MSMT17's distance pass about 2 s slower
    local = torch.empty(last - first, len(gal)).numpy() if keep_distmat else None
    settings = len(spec.settings())
    rules = excluded if isinstance(excluded, list) else [excluded] * settings
    collectors = [RankCollector(q.pids, gal.pids, rule) for rule in rules]
    for setting, start, end, dist in spec.chunks(q.feats, None if g is None else g.feats, local,
                                                 queries=(first, last)):
        if observe is not None:
            observe(setting, start, end, dist)
        collectors[setting].add(start, end, dist)
    stats = [c.stats() for c in collectors]
    if du.is_dist():
        shares = du.all_gather_object(stats)
        stats = [RankStats.concat([share[i] for share in shares]) for i in range(settings)]
        local = du.gather_rows_to_main(local, len(q)) if keep_distmat else None
    return stats, local


def query_share(num_query, block):
    """(first, end): the queries this rank scores, a contiguous share in rank order (all of
    them without torch.distributed), cut at multiples of `block` rows: every distance is then
    computed in the same matrix product as in one process (bit-identical)."""
    blocks = -(-num_query // block)
    rank, world = du.get_rank(), du.get_world_size()
    return (min(num_query, blocks * rank // world * block),
            min(num_query, blocks * (rank + 1) // world * block))


def on_device(split, *arrays):
    """int64 tensors of the arrays on the device of split's features."""
    return [torch.as_tensor(a, dtype=torch.int64, device=split.feats.device) for a in arrays]


def sweep_table(spec, metrics):
    """One row per setting of a re-ranking sweep: k1, k2, lambda and the metrics; None otherwise."""
    settings = spec.settings()
    if len(settings) == 1:
        return None
    return [OrderedDict(zip(('k1', 'k2', 'lambda'), s), **m) for s, m in zip(settings, metrics)]


def format_sweep(table):
    """Text lines of a sweep table (percentages), for the log."""
    names = [k for k in table[0] if k not in ('k1', 'k2', 'lambda')]
    widths = [max(7, len(n)) for n in names]
    lines = ['  k1   k2  lambda  ' + '  '.join(f'{n:>{w}s}' for n, w in zip(names, widths))]
    for row in table:
        lines.append(f'{row["k1"]:4d} {row["k2"]:4d}  {row["lambda"]:6.3f}  '
                     + '  '.join(f'{100 * row[n]:{w - 1}.1f}%' for n, w in zip(names, widths)))
    return lines


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


def _result(protocol, cmc, mAP, metrics, q, gal, distmat, excluded, sweep=None, **kw):
    result = EvalResult(cmc=cmc, mAP=mAP, metrics=metrics, protocol=protocol, distmat=distmat,
                        q_pids=q.pids, g_pids=gal.pids, q_camids=q.camids, g_camids=gal.camids,
                        q_paths=q.paths, g_paths=gal.paths, excluded=excluded, **kw)
    if sweep:
        result.extra['rerank_sweep'] = sweep
    return result


def same_camera_pairs(q_pids, q_camids, g_pids, g_camids):
    """excluded(start, end) of the standard protocol: the gallery entries with the query's
    identity and camera, as (rows, cols) pairs on the tensors' device."""
    index = KeyIndex(g_pids)

    def excluded(s, e):
        rows, cols = index.pairs(q_pids[s:e])
        same = g_camids[cols] == q_camids[s:e][rows]
        return rows[same], cols[same]
    return excluded


def skipped(stats):
    return int((stats.num_pos == 0).sum())


def evaluate_standard(spec, q, g, max_rank=50, keep_distmat=True):
    excluded = same_camera_pairs(*on_device(q, q.pids, q.camids, g.pids, g.camids))
    all_stats, distmat = scan(spec, q, g, excluded, keep_distmat)
    results = [scores(stats, min(max_rank, len(g))) for stats in all_stats]
    cmc, mAP = results[0]
    return _result('standard', cmc, mAP, rank_metrics(cmc, mAP), q, g, distmat, excluded,
                   sweep=sweep_table(spec, [rank_metrics(*r) for r in results]),
                   skipped_queries=skipped(all_stats[0]))


def vehicleid_draw(pids, rng):
    """(query indices, gallery indices): one uniformly drawn image per identity is the gallery."""
    perm = rng.permutation(len(pids))
    _, first = np.unique(pids[perm], return_index=True)
    gallery = np.sort(perm[first])
    return np.setdiff1d(np.arange(len(pids)), gallery), gallery


def evaluate_vehicleid(spec, test, max_rank=50, trials=10, seed=0, keep_distmat=True):
    """Mean CMC / mAP over `trials` seeded draws of a one-image-per-identity gallery."""
    rng = np.random.default_rng(seed)
    per_setting = [([], []) for _ in spec.settings()]  # (cmcs, maps) of each setting
    draws, first = [], None
    max_rank = min(max_rank, len(np.unique(test.pids)))  # the gallery: one image per identity
    for t in range(trials):
        qi, gi = vehicleid_draw(test.pids, rng)
        q, g = test.take(qi), test.take(gi)
        all_stats, distmat = scan(spec, q, g, None, keep_distmat=keep_distmat and t == 0)
        for (cmcs, maps), stats in zip(per_setting, all_stats):
            cmc, mAP = scores(stats, max_rank)
            cmcs.append(cmc)
            maps.append(mAP)
        draws.append(gi)
        if t == 0:
            first = (q, g, distmat)
    means = [(np.mean(cmcs, axis=0).astype(np.float32), float(np.mean(maps)))
             for cmcs, maps in per_setting]
    cmc, mAP = means[0]
    q, g, distmat = first
    return _result('vehicleid', cmc, mAP, rank_metrics(cmc, mAP), q, g, distmat, None,
                   sweep=sweep_table(spec, [rank_metrics(*m) for m in means]),
                   extra={'trial_mAP': per_setting[0][1], 'gallery_indices': draws})


def evaluate_animal(spec, q, g, max_rank=50, ap_mode='trapezoid', keep_distmat=True):
    """Query images are part of the gallery: each query ignores exactly its own image."""
    dev = q.feats.device
    if len(g) == 0:  # the gallery is the query set: own image = same index
        g_side, gal = None, q

        def excluded(s, e):
            return torch.arange(e - s, device=dev), torch.arange(s, e, device=dev)
    else:
        if q.paths is None or g.paths is None:
            raise ReIDError('the animal protocol needs image paths (update((feat, pids, camids, '
                            'paths))) to recognise the query image inside the gallery')
        ids = {p: i for i, p in enumerate(dict.fromkeys(list(q.paths) + list(g.paths)))}
        q_ids, g_ids = on_device(q, [ids[p] for p in q.paths], [ids[p] for p in g.paths])
        index, g_side, gal = KeyIndex(g_ids), g, g

        def excluded(s, e):
            return index.pairs(q_ids[s:e])

    all_stats, distmat = scan(spec, q, g_side, excluded, keep_distmat)
    results = [scores(stats, min(max_rank, len(gal)), ap_mode) for stats in all_stats]
    cmc, mAP = results[0]
    name = f'mAP({ap_mode})'
    return _result('animal', cmc, mAP, rank_metrics(cmc, mAP, name), q, gal, distmat, excluded,
                   sweep=sweep_table(spec, [rank_metrics(*r, name) for r in results]),
                   ap_mode=ap_mode, skipped_queries=skipped(all_stats[0]))
