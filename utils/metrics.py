"""Re-ID evaluation: the standard eval_func, the batch-by-batch evaluator and its factory.

eval_func is the Market-1501 computation of TransReID / CLIP-ReID (same CMC and AP, ties
ordered stably), done on chunks of queries with vectorised ranks (utils.ranking), so it
never sorts or copies the whole matrix. The protocols live in utils.protocols / utils.atrw.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as du
from .atomic import atomic_write
from .atrw import ATRW_MODES, evaluate_atrw, load_annotation
from .distance import METRICS, as_tensor, matrix_chunks
from .errors import ReIDError
from .finite import check_finite
from .memory import budget_bytes
from .protocols import (PROTOCOLS, DistanceSpec, EvalResult, Split, evaluate_animal,
                        evaluate_standard, evaluate_vehicleid, same_camera_pairs, scores)
from .ranking import RankStats
from .reranking import INITIAL_DISTANCES, as_list

__all__ = ['eval_func', 'R1_mAP_eval', 'make_evaluator', 'EvalResult']

AP_MODES = ('standard', 'trapezoid')


def eval_func(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, chunk_rows=None):
    """(cmc, mAP) of a [Q, G] distance matrix (numpy or torch, any device) by the standard
    protocol: per query, gallery entries with its identity and camera are dropped, queries
    without a remaining match are skipped; cmc[r] is the fraction of the others whose first
    match is within rank r + 1 (float32, length min(max_rank, G)); AP is the mean of the
    precision at each match. chunk_rows only bounds memory; results do not depend on it."""
    dev = distmat.device if torch.is_tensor(distmat) else torch.device('cpu')
    qp, gp, qc, gc = (as_tensor(x, torch.int64).to(dev)
                      for x in (q_pids, g_pids, q_camids, g_camids))
    stats = RankStats.collect(matrix_chunks(distmat, chunk_rows), qp, gp,
                              same_camera_pairs(qp, qc, gp, gc))
    cmc, mAP = scores(stats, min(max_rank, len(gp)))
    return cmc, mAP


def _choice(key, value, choices):
    if value not in choices:
        raise ReIDError(f'{key} must be one of {", ".join(map(repr, choices))}, got {value!r}')
    return value


def wants_feat_norm(value):
    """TEST.FEAT_NORM as a bool: True / False, or 'yes' / 'no' (any case)."""
    if isinstance(value, bool):
        return value
    return _choice('TEST.FEAT_NORM', str(value).lower(), ('yes', 'no')) == 'yes'


class R1_mAP_eval:
    """Gathers features batch by batch; compute() scores them by the chosen protocol.

    The first num_query items are the queries, the rest the gallery (VehicleID and ATRW:
    all test images as queries and an empty gallery). Under torch.distributed every rank
    gathers all ranks' items in rank order, scores its own share of the queries and returns
    the same result; only rank 0 holds result.distmat. keep_distmat=False (the scripts' choice)
    keeps no distance matrix unless dist_mat_path or visualize needs it. k1, k2 and
    lambda_value may be lists: every combination is scored in one pass, the first is the
    result and result.extra['rerank_sweep'] lists them all.
    """

    def __init__(self, num_query, max_rank=50, feat_norm='yes', reranking=False, *,
                 protocol='standard', distance='euclidean', k1=20, k2=6, lambda_value=0.3,
                 rerank_dist='euclidean', ap_mode='trapezoid', atrw_annotation='',
                 atrw_mode='dedup', vehicleid_trials=10, vehicleid_seed=0, dist_mat_path='',
                 visualize=0, output_dir='', caption='', keep_distmat=True, memory_budget=0):
        self.num_query, self.max_rank = num_query, max_rank
        self.memory_budget = memory_budget
        if memory_budget:
            budget_bytes(memory_budget)  # refuse a bad value now, not after feature extraction
        self.feat_norm = wants_feat_norm(feat_norm)
        self.protocol = _choice('TEST.PROTOCOL', protocol, PROTOCOLS)
        self.spec = DistanceSpec(_choice('TEST.DISTANCE', distance, METRICS))
        if reranking:
            for key, values in (('TEST.RE_RANKING_K1', k1), ('TEST.RE_RANKING_K2', k2)):
                if min(as_list(values)) < 1:
                    raise ReIDError(f'{key} must be at least 1, got {values}')
            self.spec.rerank = dict(k1=k1, k2=k2, lambda_value=lambda_value,
                                    dist=_choice('TEST.RE_RANKING_DIST', rerank_dist, INITIAL_DISTANCES))
        self.ap_mode = _choice('TEST.AP_MODE', ap_mode, AP_MODES)
        if self.protocol == 'atrw':
            load_annotation(atrw_annotation)  # fail now, not after feature extraction
        self.atrw_annotation = atrw_annotation
        self.atrw_mode = _choice('TEST.ATRW_MODE', atrw_mode, ATRW_MODES)
        self.trials, self.seed = vehicleid_trials, vehicleid_seed
        if self.protocol == 'vehicleid' and vehicleid_trials < 1:
            raise ReIDError(f'TEST.VEHICLEID_TRIALS must be at least 1, got {vehicleid_trials}')
        self.dist_mat_path, self.visualize, self.output_dir = dist_mat_path, visualize, output_dir
        self.caption = caption  # dataset and checkpoint, for the CMC plot
        self.heat_mapper = None  # processor.heatmaps.HeatMapper for the rank lists, if any
        # result.distmat: kept for library callers; the scripts keep it only when asked for
        self.keep_distmat = bool(keep_distmat or dist_mat_path or visualize)
        self.reset()

    def describe(self):
        """One line saying how distances are made, e.g. for the evaluation log."""
        r = self.spec.rerank
        protocol = self.protocol + (f' ({self.atrw_mode})' if self.protocol == 'atrw' else '')
        if not r:
            return f'{protocol} protocol, {self.spec.metric} distance, no re-ranking'
        return (f"{protocol} protocol, k-reciprocal re-ranking k1={r['k1']} k2={r['k2']} "
                f"lambda={r['lambda_value']} ({r['dist']} initial distance)")

    def reset(self):
        self.feats, self.pids, self.camids, self.paths = [], [], [], []

    def update(self, output):
        feat, pids, camids = output[:3]
        self.feats.append(feat.detach())
        self.pids.append(as_tensor(pids, torch.int64).cpu().reshape(-1))
        self.camids.append(as_tensor(camids, torch.int64).cpu().reshape(-1))
        if len(output) > 3:
            self.paths.extend(output[3])

    def _gathered(self):
        # a rank without test batches: an empty share on the others' device
        feats = torch.cat(self.feats) if self.feats else torch.zeros(0, 0, device=du.collective_device())
        pids = torch.cat(self.pids) if self.pids else torch.zeros(0, dtype=torch.int64)
        camids = torch.cat(self.camids) if self.camids else torch.zeros(0, dtype=torch.int64)
        paths = list(self.paths)
        if du.is_dist():
            dim = max(du.all_gather_object(feats.shape[1]))
            feats = du.all_gather_tensor(feats.reshape(-1, dim).float())
            pids = du.all_gather_tensor(pids.to(feats.device)).cpu()
            camids = du.all_gather_tensor(camids.to(feats.device)).cpu()
            paths = [p for part in du.all_gather_object(paths) for p in part]
        if paths and len(paths) != len(pids):
            raise ReIDError(f'got {len(paths)} image paths for {len(pids)} features')
        return feats.float(), pids.numpy(), camids.numpy(), paths or None

    def compute(self):
        feats, pids, camids, paths = self._gathered()
        n, nq = len(pids), self.num_query
        if not 0 < nq <= n:
            raise ReIDError(f'num_query is {nq} but {n} images were evaluated')
        check_finite(('query', feats[:nq], paths[:nq] if paths else None),
                     ('gallery', feats[nq:], paths[nq:] if paths else None))
        if self.feat_norm:
            feats = F.normalize(feats, dim=1, p=2, out=feats)  # feats is the gathered copy
        spec = self._fitted_spec(feats, n - nq if n > nq else n)
        q = Split(feats[:nq], pids[:nq], camids[:nq], paths[:nq] if paths else None)
        g = Split(feats[nq:], pids[nq:], camids[nq:], paths[nq:] if paths else None)
        keep = self.keep_distmat
        if self.protocol == 'standard':
            result = evaluate_standard(spec, q, g, self.max_rank, keep)
        elif self.protocol == 'animal':
            result = evaluate_animal(spec, q, g, self.max_rank, self.ap_mode, keep)
        elif self.protocol == 'vehicleid':
            test = Split(feats, pids, camids, paths)
            result = evaluate_vehicleid(spec, test, self.max_rank, self.trials, self.seed,
                                        keep)
        else:
            test = Split(feats, pids, camids, paths)
            result = evaluate_atrw(spec, test, self.atrw_annotation, self.max_rank,
                                   self.atrw_mode, nq, keep)
        with du.fail_together():  # rank 0 writes: a failure there stops every rank
            if du.is_main_process():
                self._save(result)
        return result

    def _fitted_spec(self, feats, num_gallery):
        """self.spec with chunks within the memory budget, less two copies of the features
        (the gathered one here, and a normalised or selected one downstream). Under
        torch.distributed every rank takes the smallest budget, so they cut the queries alike."""
        budget = budget_bytes(self.memory_budget, feats.device)
        if du.is_dist():
            budget = min(du.all_gather_object(budget))
        return self.spec.fitted(budget - 2 * feats.nbytes, num_gallery, feats.device)

    def _save(self, result):
        if self.dist_mat_path and result.distmat is not None:
            save_distmat(result.distmat, self.dist_mat_path)
        if self.visualize and self.output_dir:
            from .visualize import save_evaluation_pictures
            save_evaluation_pictures(result, self.output_dir, self.visualize, self.caption,
                                     self.heat_mapper)


def save_distmat(distmat, path):
    """np.save to path (.npy added if missing), written atomically."""
    path = path if path.endswith('.npy') else path + '.npy'
    with atomic_write(path) as f:
        np.save(f, distmat)
    return path


def make_evaluator(cfg, num_query, protocol):
    """The evaluator cfg.TEST asks for; TEST.PROTOCOL 'auto' uses the dataset's `protocol`."""
    t = cfg.TEST
    name = (protocol or 'standard') if t.PROTOCOL == 'auto' else t.PROTOCOL
    return R1_mAP_eval(
        num_query, max_rank=t.MAX_RANK, feat_norm=t.FEAT_NORM, reranking=t.RE_RANKING,
        protocol=_choice('TEST.PROTOCOL', name, PROTOCOLS), distance=t.DISTANCE,
        k1=t.RE_RANKING_K1, k2=t.RE_RANKING_K2, lambda_value=t.RE_RANKING_LAMBDA,
        rerank_dist=t.RE_RANKING_DIST, ap_mode=t.AP_MODE, atrw_annotation=t.ATRW_ANNOTATION,
        atrw_mode=t.ATRW_MODE,
        vehicleid_trials=t.VEHICLEID_TRIALS,
        dist_mat_path=os.path.join(cfg.OUTPUT_DIR, t.DIST_MAT) if t.DIST_MAT else '',
        visualize=t.VISUALIZE, output_dir=cfg.OUTPUT_DIR, caption=_caption(cfg), keep_distmat=False,
        memory_budget=t.MEMORY_BUDGET)


def _caption(cfg):
    """'<dataset> | <checkpoint file>' (the model in training when TEST.WEIGHT is empty)."""
    d = cfg.DATASETS
    dataset = f'{d.NAMES} ({d.SPECIES})' if d.NAMES == 'animals' else d.NAMES
    model = os.path.basename(cfg.TEST.WEIGHT) if cfg.TEST.WEIGHT else 'model in training'
    return f'{dataset} | {model}'
