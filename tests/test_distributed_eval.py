"""Evaluation under torch.distributed: two gloo processes, each holding a share of the test
items, score a share of the queries each and must give the single-process result; only rank
0 holds the distance matrix, and only when one is kept."""
import json

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils import distributed as du
from utils.metrics import R1_mAP_eval


def _atrw_annotation(path, n, rng):
    rows = [{'imgid': i, 'query': str(rng.choice(['sing', 'multi', ''])),
             'entityid': int(rng.integers(-1, 5)),
             'frame': [int(rng.integers(0, 2)), 0, int(rng.integers(0, 9))]} for i in range(n)]
    path.write_text(json.dumps(rows))
    return str(path)


def _cases(tmp_path):
    """name -> (R1_mAP_eval keyword arguments, features, pids, camids, paths)."""
    rng = np.random.default_rng(3)

    def items(n, ids, dim=5, cams=3):
        feats = rng.standard_normal((n, dim)).astype(np.float32)
        feats[4] = feats[1]  # a tie
        return feats, rng.integers(0, ids, n), rng.integers(0, cams, n), [f'{i:06d}.jpg' for i in range(n)]

    sweep = dict(reranking=True, k1=[3, 5], k2=[2], lambda_value=[0.3, 0.0])
    standard = items(37, 6)
    tiger = items(30, 5)
    tiger_twice = tuple(np.concatenate([a, a]) if isinstance(a, np.ndarray) else a + a for a in tiger)
    anno = _atrw_annotation(tmp_path / 'atrw.json', 30, rng)
    return {
        'standard': (dict(num_query=7), *standard),
        'standard, re-ranking sweep': (dict(num_query=7, **sweep), *standard),
        'one query (an empty share)': (dict(num_query=1, reranking=True, k1=4, k2=2), *standard),
        'no distance matrix': (dict(num_query=7, keep_distmat=False), *standard),
        'cosine distance': (dict(num_query=7, distance='cosine', feat_norm='no'), *standard),
        'vehicleid': (dict(num_query=37, protocol='vehicleid', vehicleid_trials=3), *standard),
        'animal': (dict(num_query=9, protocol='animal', **sweep),
                   *(np.concatenate([a[:9], a]) if isinstance(a, np.ndarray) else a[:9] + a
                     for a in standard)),
        'atrw dedup': (dict(num_query=30, protocol='atrw', atrw_annotation=anno, **sweep), *tiger),
        'atrw animal_code': (dict(num_query=30, protocol='atrw', atrw_annotation=anno,
                                  atrw_mode='animal_code', **sweep), *tiger_twice),
    }


def _evaluate(case, rank=0, world=1):
    kwargs, feats, pids, camids, paths = case
    lo, hi = len(pids) * rank // world, len(pids) * (rank + 1) // world  # this rank's items
    evaluator = R1_mAP_eval(**kwargs)
    evaluator.spec.block = 4  # distance blocks of 4 queries: both ranks get a share
    evaluator.update((torch.from_numpy(feats[lo:hi]), pids[lo:hi], camids[lo:hi], paths[lo:hi]))
    result = evaluator.compute()
    sweep = result.extra.get('rerank_sweep')
    excluded = [result.excluded_mask(q) for q in range(len(result.q_pids))]
    return dict(result.summary()), sweep, result.distmat, excluded


def _worker(rank, world, init_file, cases, out):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    torch.set_num_threads(1)
    du.GATHER_SLICE_BYTES = 3 * 4 * 40  # distance rows gathered 3 at a time
    try:
        torch.save({name: _evaluate(case, rank, world) for name, case in cases.items()},
                   f'{out}.{rank}')
    finally:
        dist.destroy_process_group()


def test_two_processes_score_query_shares_as_one(tmp_path):
    cases = _cases(tmp_path)
    mp.spawn(_worker, args=(2, str(tmp_path / 'init'), cases, str(tmp_path / 'result')), nprocs=2)
    ranks = [torch.load(tmp_path / f'result.{r}', weights_only=False) for r in range(2)]
    for name, case in cases.items():
        summary, sweep, distmat, excluded = _evaluate(case)
        for rank, results in enumerate(ranks):
            got_summary, got_sweep, got_distmat, got_excluded = results[name]
            assert got_summary == summary, (name, rank)
            assert got_sweep == sweep, (name, rank)
            assert all(np.array_equal(a, b) for a, b in zip(got_excluded, excluded)), (name, rank)
            if rank == 0 and distmat is not None:
                np.testing.assert_array_equal(got_distmat, distmat, err_msg=name)
            else:
                assert got_distmat is None, (name, rank)
        assert (distmat is None) == (name == 'no distance matrix')
