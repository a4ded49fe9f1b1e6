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
from .protocols import Split, _result, scan

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
    """(split with entity ids as pids, query kinds, entity ids, camera codes, frame numbers)."""
    ids = [image_id(p) for p in split.paths]
    missing = [p for p, i in zip(split.paths, ids) if i not in anno]
    if missing:
        raise ReIDError(f'{len(missing)} ATRW test images are not in TEST.ATRW_ANNOTATION '
                        f'{annotation_path!r}, e.g. {missing[0]!r}')
    kind, eid, cam, frame = zip(*(anno[i] for i in ids))
    eid = torch.tensor(eid)
    split = Split(split.feats, eid.numpy(), split.camids, split.paths)
    return split, np.asarray(kind), eid, cam, torch.tensor(frame), np.asarray(ids)


class _DropTopRanked:
    """A DistanceSpec whose chunks also note each query's top-ranked gallery entry (the
    first one on ties), for the animal code's "skip the first answer" rule."""

    def __init__(self, spec):
        self.spec, self.top = spec, {}

    def chunks(self, qf, gf):
        for start, end, dist in self.spec.chunks(qf, gf):
            self.top[start] = dist.argmin(dim=1).cpu()
            yield start, end, dist

    def mask(self, start, end, num_gallery):
        cols = torch.arange(num_gallery)
        return cols[None, :] == self.top[start][:end - start, None]


def evaluate_atrw(spec, test, annotation_path, max_rank=50, mode='dedup', num_query=None):
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
    q, kind, q_eid, q_cam, q_frame, q_ids = _annotated(q, anno, annotation_path)
    g, _, g_eid, g_cam, g_frame, _ = _annotated(g, anno, annotation_path)
    cams = np.unique(np.asarray(q_cam + g_cam), axis=0, return_inverse=True)[1].reshape(-1)
    q_cam, g_cam = torch.tensor(cams[:len(q_cam)]), torch.tensor(cams[len(q_cam):])

    def junk(s, e):
        near = ((g_eid[None, :] == q_eid[s:e, None]) & (g_cam[None, :] == q_cam[s:e, None])
                & ((g_frame[None, :] - q_frame[s:e, None]).abs() <= 3))
        return near | (g_eid == -1)[None, :]

    if mode == 'dedup':
        def excluded(s, e):
            own = torch.arange(len(g))[None, :] == torch.arange(s, e)[:, None]
            return own | junk(s, e)
        stats, distmat = scan(spec, q, None, excluded)
    else:
        ranked = _DropTopRanked(spec)

        def excluded(s, e):
            return ranked.mask(s, e, len(g)) | junk(s, e)
        stats, distmat = scan(ranked, q, g, excluded)
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
    return _result('atrw', cmc, metrics['mmAP'], metrics, q, g, distmat, excluded,
                   extra={'query_kind': kind, 'imgid': q_ids, 'mode': mode})
