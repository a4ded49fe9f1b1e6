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
from .protocols import Split, _result, on_device, scan, sweep_table

QUERY_KINDS = (('sing', 'single_cam'), ('multi', 'cross_cam'))


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


def evaluate_atrw(spec, test, annotation_path, max_rank=50):
    """Score the test images (query set; gallery = all other test images) by the official rules."""
    anno = load_annotation(annotation_path)
    if test.paths is None:
        raise ReIDError('the ATRW protocol needs image paths to match images to the annotation')
    ids = [image_id(p) for p in test.paths]
    unique = np.unique(ids, return_index=True)[1]
    if len(unique) < len(ids):  # the same image given twice (e.g. query and gallery): once
        test = test.take(np.sort(unique))
        ids = [ids[i] for i in np.sort(unique)]
    missing = [p for p, i in zip(test.paths, ids) if i not in anno]
    if missing:
        raise ReIDError(f'{len(missing)} ATRW test images are not in TEST.ATRW_ANNOTATION '
                        f'{annotation_path!r}, e.g. {missing[0]!r}')
    kind, eid, cam, frame = zip(*(anno[i] for i in ids))
    cam = np.unique(np.asarray(cam), axis=0, return_inverse=True)[1].reshape(-1)
    test = Split(test.feats, np.asarray(eid), test.camids, test.paths)
    excluded = junk_pairs(*on_device(test, eid, cam, frame))
    all_stats, distmat = scan(spec, test, None, excluded)
    kind = np.asarray(kind)
    results = [_scores(stats, kind, max_rank) for stats in all_stats]
    cmc, metrics = results[0]
    return _result('atrw', cmc, metrics['mmAP'], metrics, test, test, distmat, excluded,
                   sweep=sweep_table(spec, [m for _, m in results]),
                   extra={'query_kind': kind, 'imgid': np.asarray(ids)})


def junk_pairs(eid, cam, frame):
    """excluded(start, end): each query's own image, the same entity seen by the same camera
    within 3 frames, and every image of entity -1, as (rows, cols) pairs."""
    index, unknown, n = KeyIndex(eid), (eid == -1).nonzero().squeeze(1), len(eid)

    def excluded(s, e):
        own = torch.arange(e - s, device=eid.device)
        rows, cols = index.pairs(eid[s:e])
        near = (cam[cols] == cam[s:e][rows]) & ((frame[cols] - frame[s:e][rows]).abs() <= 3)
        junk = own.repeat_interleave(len(unknown)), unknown.repeat(e - s)
        return union((own, own + s), (rows[near], cols[near]), junk, num_cols=n)
    return excluded


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
