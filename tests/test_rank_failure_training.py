"""Whole training jobs of two gloo processes whose rank 0 fails alone, in clustering or while
writing a checkpoint or the curves: both ranks stop at once with the same error line and exit code 2
(gloo's collective timeout is 30 minutes)."""
import errno
import importlib
import io
import os
import socket
import sys

import pytest
import torch

from _run_helpers import screen_lines, tiny_run, train_opts  # noqa: F401
from test_rank_failure import spawn_two
from utils.errors import ReIDError, cli_main


def _clustering_fails(*args, **kwargs):
    raise ReIDError('clustering ran out of memory')


def _write_refused(*args):
    raise OSError(errno.EACCES, 'Permission denied', next(a for a in args if isinstance(a, str)))


# where rank 0 fails: (module, name replaced there)
PLACES = {'clustering': ('processor.pcl_unsup', 'cluster_features', _clustering_fails),
          'checkpoint': ('processor.engine', 'save_weights', _write_refused),
          'curves': ('utils.training_log', '_append', _write_refused)}


def _train_worker(rank, port, argv, where, out):
    """train_pcl.py's main as rank `rank` of a two-process gloo job; rank 0's `where` fails."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2',
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if rank == 0:
        module, name, fake = PLACES[where]
        setattr(importlib.import_module(module), name, fake)
    from processor.cli import train_main
    sys.argv, sys.stderr = ['train_pcl.py', *argv], io.StringIO()
    try:
        cli_main(train_main)('pcl', 'test')
        code = 0
    except SystemExit as stop:
        code = stop.code
    torch.save((code, sys.stderr.getvalue()), f'{out}.{rank}')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.parametrize('where, extra, expected', [
    ('clustering', ('MODEL.UNSUPERVISED', True, 'CLUSTER.K1', 10, 'CLUSTER.K2', 3),
     'error: clustering ran out of memory'),
    ('checkpoint', ('SOLVER.MAX_EPOCHS', 1),
     "error: [Errno 13] Permission denied: '{out}/tiny-ViT_1.pth'"),
    ('curves', (), "error: [Errno 13] Permission denied: '{out}/metrics.csv'"),
], ids=['clustering', 'checkpoint', 'curves'])
def test_rank0_failure_stops_the_training_job(tmp_path, tiny_run, where, extra, expected):
    out = tmp_path / 'out'
    argv = train_opts(tiny_run, out, 'SOLVER.EVAL_PERIOD', 100, *extra)
    spawn_two(_train_worker, _free_port(), argv, where, str(tmp_path / 'r'))
    results = [torch.load(f'{tmp_path}/r.{rank}') for rank in range(2)]
    expected = expected.format(out=out)
    for code, stderr in results:
        assert code == 2 and screen_lines(stderr)[-1] == expected, stderr[-2000:]
