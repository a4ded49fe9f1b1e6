"""ATRW (Amur tiger) plain re-ID track, as the official CVWC 2019 script scores it.

Annotation (official gt_test_plain.json): a list of
``{"imgid": int, "query": "sing"|"multi"|..., "entityid": int, "frame": [a, b, frame_no]}``;
an image is named by its imgid (``000123.jpg`` -> 123). ``"sing"`` queries are tigers seen
by a single camera, ``"multi"`` by several; other values are gallery-only images.

Rules (ATRWEvalScript atrwtool/plain.py): every test image is a query's gallery except the
query itself; a gallery image is junk, i.e. ignored, when it shows the same entity from the
same camera (``frame[0]`` and ``frame[1]`` equal) within 3 frames, or when its entityid is
-1. AP is scikit-learn's average precision of the ranking with junk removed (= the standard
AP); a query with no valid match scores AP 0 and misses every top-k (the official script
appends 0 for its NaN AP and skips its CMC), and each rate is over all queries of its kind.
Reported: mAP, top-1 and top-5 for single- and cross-camera queries, and mmAP, their mAPs' mean.
"""
import json
import os
from collections import OrderedDict

import numpy as np
import torch

from .errors import ReIDError
from .pairs import KeyIndex, union
from . import distributed as du
from .protocols import Split, _result, on_device, query_share, scan, sweep_table

QUERY_KINDS = (('sing', 'single_cam'), ('multi', 'cross_cam'))
ATRW_MODES = ('dedup', 'animal_code')


def load_annotation(path):
    """imgid -> (query kind, entityid, camera (a, b), frame number)."""
    if not path:
        raise ReIDError('TEST.ATRW_ANNOTATION is empty: give the official ATRW plain-track '
                        'annotation file (gt_test_plain.json)')
    try:
        with open(path) as f:
            entries = json.load(f)
        return {int(e['imgid']): (e['query'], int(e['entityid']), (e['frame'][0], e['frame'][1]),
                                  int(e['frame'][2])) for e in entries}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ReIDError(f'TEST.ATRW_ANNOTATION {path!r} is not a readable ATRW annotation '
                        f'list of {{imgid, query, entityid, frame}}: {err}') from None


def image_id(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        return int(stem)
    except ValueError:
        raise ReIDError(f'ATRW image {path!r}: the file name must be the annotation imgid '
                        '(e.g. 000123.jpg)') from None


def _annotated(split, anno, annotation_path):
    """(split with entity ids as pids, query kinds, image ids, entity ids, cameras, frames)."""
    ids = [image_id(p) for p in split.paths]
    missing = [p for p, i in zip(split.paths, ids) if i not in anno]
    if missing:
        raise ReIDError(f'{len(missing)} ATRW test images are not in TEST.ATRW_ANNOTATION '
                        f'{annotation_path!r}, e.g. {missing[0]!r}')
    kind, eid, cam, frame = zip(*(anno[i] for i in ids))
    split = Split(split.feats, np.asarray(eid), split.camids, split.paths)
    return split, np.asarray(kind), np.asarray(ids), eid, cam, frame


def evaluate_atrw(spec, test, annotation_path, max_rank=50, mode='dedup', num_query=None,
                  keep_distmat=True):
    """Score the test images by the official rules.

    mode 'dedup': every test image once (duplicates dropped); each one is a query against
    all the others. mode 'animal_code': the first num_query images are the queries and the
    rest the gallery (the test list again when there is no rest), so with re-ranking every
    image enters the k-reciprocal sets twice; each query drops its top-ranked gallery entry
    rather than its own image (the own image then falls to the junk rule). This is how the
    animal code's test_rerank_clipreid.py made the published tiger numbers.
    """
    if mode not in ATRW_MODES:
        raise ReIDError(f'TEST.ATRW_MODE must be one of {", ".join(map(repr, ATRW_MODES))}, '
                        f'got {mode!r}')
    anno = load_annotation(annotation_path)
    if test.paths is None:
        raise ReIDError('the ATRW protocol needs image paths to match images to the annotation')
    if mode == 'dedup':
        ids = [image_id(p) for p in test.paths]
        unique = np.sort(np.unique(ids, return_index=True)[1])
        q = g = test.take(unique) if len(unique) < len(ids) else test
    else:
        nq = num_query if num_query and num_query < len(test) else len(test)
        q = test.take(np.arange(nq))
        g = test.take(np.arange(nq, len(test))) if nq < len(test) else q
    q, kind, q_ids, q_eid, q_cam, q_frame = _annotated(q, anno, annotation_path)
    g, _, _, g_eid, g_cam, g_frame = _annotated(g, anno, annotation_path)
    cams = np.unique(np.asarray(q_cam + g_cam), axis=0, return_inverse=True)[1].reshape(-1)
    junk = junk_pairs(on_device(q, q_eid, cams[:len(q)], q_frame),
                      on_device(q, g_eid, cams[len(q):], g_frame))
    if mode == 'dedup':
        def excluded(s, e):
            own = torch.arange(e - s, device=q.feats.device)
            return union((own, own + s), junk(s, e), num_cols=len(g))
        all_stats, distmat = scan(spec, q, None, excluded, keep_distmat)
    else:
        all_stats, distmat, excluded = _scan_dropping_top(spec, q, g, junk, keep_distmat)
    results = [_scores(stats, kind, min(max_rank, len(g))) for stats in all_stats]
    cmc, metrics = results[0]
    return _result('atrw', cmc, metrics['mmAP'], metrics, q, g, distmat, excluded,
                   sweep=sweep_table(spec, [m for _, m in results]),
                   extra={'query_kind': kind, 'imgid': q_ids, 'mode': mode})


def junk_pairs(q_keys, g_keys):
    """excluded(start, end) of the official junk rule, as (rows, cols) pairs: the gallery
    images of the query's entity seen by the same camera within 3 frames, and every image of
    entity -1. q_keys, g_keys: (entity ids, camera codes, frame numbers) as tensors."""
    (q_eid, q_cam, q_frame), (g_eid, g_cam, g_frame) = q_keys, g_keys
    index, unknown = KeyIndex(g_eid), (g_eid == -1).nonzero().squeeze(1)

    def excluded(s, e):
        rows, cols = index.pairs(q_eid[s:e])
        near = (g_cam[cols] == q_cam[s:e][rows]) & ((g_frame[cols] - q_frame[s:e][rows]).abs() <= 3)
        every_row = torch.arange(e - s, device=g_eid.device)
        unknown_pairs = every_row.repeat_interleave(len(unknown)), unknown.repeat(e - s)
        return union((rows[near], cols[near]), unknown_pairs, num_cols=len(g_eid))
    return excluded


def _scan_dropping_top(spec, q, g, junk, keep_distmat):
    """scan() with the animal code's "skip the first answer" rule: each query also ignores
    its top-ranked gallery entry (the first one on ties) under each setting's distances.
    Returns (stats per setting, setting 0's distances, setting 0's excluded)."""
    top = torch.zeros(len(spec.settings()), len(q), dtype=torch.int64, device=q.feats.device)

    def excluded_under(setting):
        def excluded(s, e):
            rows = torch.arange(e - s, device=top.device)
            return union((rows, top[setting, s:e]), junk(s, e), num_cols=len(g))
        return excluded

    def note_top(setting, start, end, dist):
        top[setting, start:end] = dist.argmin(dim=1).to(top.device)

    stats, distmat = scan(spec, q, g, [excluded_under(i) for i in range(len(top))],
                          keep_distmat, observe=note_top)
    first, last = query_share(len(q), spec.block)
    top[:] = du.all_gather_tensor(top[:, first:last].T.contiguous()).T  # for excluded_mask
    return stats, distmat, excluded_under(0)


def _scores(stats, kind, max_rank):
    """(cmc over the queries, the official metrics) of one ranking."""
    metrics = OrderedDict(mmAP=0.0)
    for code, name in QUERY_KINDS:
        sub = stats.subset(np.flatnonzero(kind == code))
        n = len(sub.num_pos) or float('nan')  # no query of this kind: nan, as the official mean
        hits = sub.cmc_counts(5)
        metrics[f'mAP({name})'] = float(np.sum(np.nan_to_num(sub.average_precision()))) / n
        metrics[f'top-1({name})'] = float(hits[0]) / n
        metrics[f'top-5({name})'] = float(hits[4]) / n
    metrics['mmAP'] = (metrics['mAP(single_cam)'] + metrics['mAP(cross_cam)']) / 2
    queries = stats.subset(np.flatnonzero(np.isin(kind, [c for c, _ in QUERY_KINDS])))
    cmc = queries.cmc_counts(max_rank).astype(np.float32) / float(max(len(queries.num_pos), 1))
    return cmc, metrics
