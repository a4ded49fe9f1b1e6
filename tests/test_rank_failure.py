"""A rank that fails in work only it does (rank 0 clustering, writing a file) stops every rank
at once with the same error: no rank waits in the next collective for its timeout (5 minutes
here, 30 under NCCL): ending within seconds proves that nobody waited for it."""
import errno
import os
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils import distributed as du
from utils.errors import ReIDError, one_line
from utils.metrics import R1_mAP_eval

DEADLINE = 120  # seconds for a whole two-process job; the collective timeout is far longer

FAILURES = {
    'bad input': lambda: ReIDError('clustering found nothing'),
    'refused file': lambda: OSError(errno.EACCES, 'Permission denied', '/out/x.pth'),
    'bug': lambda: ValueError('a bug'),
}


def spawn_two(worker, *args):
    """Run worker(rank, *args) in two processes; fail the test when they outlive DEADLINE."""
    started = time.monotonic()
    context = mp.start_processes(worker, args=args, nprocs=2, join=False)
    while not context.join(timeout=max(0.1, started + DEADLINE - time.monotonic())):
        if time.monotonic() > started + DEADLINE:
            for process in context.processes:
                process.kill()
            pytest.fail(f'the ranks did not stop within {DEADLINE} s')


def _error(err):
    return f'{type(err).__name__}: {one_line(err)}'


# ----- the helper ------------------------------------------------------------------------------
CASES = [(None, None)] + [(failure, rank) for failure in sorted(FAILURES) for rank in (0, 1)]


def _helper_worker(rank, init_file, out):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2,
                            timeout=timedelta(minutes=5))
    results = []
    for failure, failing_rank in CASES:
        try:
            with du.fail_together():
                if rank == failing_rank:
                    raise FAILURES[failure]()
            du.broadcast_from_main(torch.zeros(3))  # where the ranks meet next
            results.append('ok')
        except Exception as err:  # noqa: BLE001
            results.append(_error(err))
    results.append(_save_distmat(rank, os.path.dirname(out)))
    torch.save(results, f'{out}.{rank}')
    dist.destroy_process_group()


def test_every_rank_raises_the_failure_of_one(tmp_path):
    """Failures on rank 0 and on rank 1, one after the other in the same process group."""
    spawn_two(_helper_worker, str(tmp_path / 'init'), str(tmp_path / 'r'))
    results = list(zip(*[torch.load(f'{tmp_path}/r.{rank}') for rank in range(2)]))
    assert results[0] == ('ok', 'ok')
    for (failure, failing_rank), got in zip(CASES[1:], results[1:-1]):
        err = FAILURES[failure]()
        own = _error(err)
        other = {'bad input': own, 'refused file': f'ReIDError: {one_line(err)}',
                 'bug': f'RuntimeError: rank {failing_rank} failed: {own}'}[failure]
        assert got[failing_rank] == own and got[1 - failing_rank] == other, (failure, got)
    # rank 0 could not write the distance matrix (TEST.DIST_MAT under a file): a refused file
    refused, other = results[-1]
    assert refused.startswith('FileExistsError: ') and 'a_file' in refused
    assert other == 'ReIDError: ' + refused.split(': ', 1)[1]


def _save_distmat(rank, folder):
    """Evaluate a share of 8 items per rank with TEST.DIST_MAT under a file, then meet."""
    blocker = os.path.join(folder, 'a_file')
    open(blocker, 'w').close()
    rng = np.random.default_rng(0)
    evaluator = R1_mAP_eval(4, dist_mat_path=os.path.join(blocker, 'dist.npy'))
    evaluator.update((torch.from_numpy(rng.standard_normal((8, 5)).astype(np.float32)),
                      np.arange(8) % 4, np.full(8, rank)))
    try:
        evaluator.compute()
        du.broadcast_from_main(torch.zeros(3))
        return 'ok'
    except Exception as err:  # noqa: BLE001
        return _error(err)
