"""One run per OUTPUT_DIR: a second training run into a folder that a live run holds stops
before writing anything, naming the folder and the holder; the lock of a killed run does not
stop a later --resume."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from _run_helpers import run, run_and_kill, run_ok, screen_lines, state, tiny_run  # noqa: F401
from _run_helpers import NAME, REPO, train_opts
from config import load_config
from utils.errors import ReIDError
from utils.run_lock import LOCK_FILE, run_folder_lock


def _held_by_me(out):
    return f'OUTPUT_DIR {out} is in use by another training run (process {os.getpid()} on ' \
           f'{socket.gethostname()})'


def test_a_held_folder_refuses_a_second_lock(tmp_path):
    cfg = load_config('', ['OUTPUT_DIR', str(tmp_path / 'out')])
    with run_folder_lock(cfg):
        with pytest.raises(ReIDError, match='in use by another training run'):
            with run_folder_lock(cfg):
                pass
    with run_folder_lock(cfg):  # released at the end of the first
        pass
    assert os.listdir(tmp_path / 'out') == [LOCK_FILE]


@pytest.mark.parametrize('nproc', [0, 2])
def test_second_run_stops_before_writing(tmp_path, tiny_run, nproc):
    """Single-process, and a whole torchrun job (its rank 0 refuses; torchrun ends the rest)."""
    out = tmp_path / 'out'
    with run_folder_lock(load_config('', ['OUTPUT_DIR', str(out)])):
        proc = run('train_pcl.py', train_opts(tiny_run, out), nproc=nproc, timeout=120)
    assert os.listdir(out) == [LOCK_FILE]  # no log, config, curves or checkpoint
    if nproc:
        assert proc.returncode != 0 and f'error: {_held_by_me(out)}' in proc.stderr
        return
    lines = screen_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0] == f'error: {_held_by_me(out)}; wait for it to end or give another OUTPUT_DIR'


def test_lock_of_a_killed_run_does_not_block_resume(tmp_path, tiny_run):
    out = tmp_path / 'out'
    opts = train_opts(tiny_run, out)
    run_and_kill('train_pcl.py', opts, 'pcl epoch[2] iteration[1] ', tmp_path / 'err')
    assert (out / LOCK_FILE).exists() and state(out, 'pcl')['epoch'] == 1
    resumed = run_ok('train_pcl.py', ['--resume', *opts]).stdout
    assert 'resumed pcl after epoch 1' in resumed and os.path.exists(out / f'{NAME}_2.pth')


HOLD_AND_FORK = '''
import os, signal, sys, time
from config import load_config
from utils.run_lock import run_folder_lock
with run_folder_lock(load_config('', ['OUTPUT_DIR', sys.argv[1]])):
    child = os.fork()
    if child == 0:  # a loader worker that outlives the run for a while
        os.close(1)
        os.close(2)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
'''


def test_lock_dies_with_the_run_not_with_its_forked_workers(tmp_path):
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, '-c', HOLD_AND_FORK, str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout)
    try:
        os.kill(child, 0)  # still running
        with run_folder_lock(load_config('', ['OUTPUT_DIR', str(out)])):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
