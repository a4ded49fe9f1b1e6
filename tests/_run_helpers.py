"""Helpers of the tests that run the real entry scripts as subprocesses on tiny generated data.

Data: the market1501 demo layout with 12 identities at 64x32 (6 train identities with 24
images each; 12 query images; 132 gallery images plus 4 distractors) and a tiny random ViT
CLIP. Runs are short, on the CPU, without augmentation.
"""
import fcntl
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

from datasets.demo_data import generate
from model.tiny_clip import save_tiny_clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One thread per process: tiny models gain nothing from more, and on a busy 2-core machine
# threads waiting for each other make a run several times slower.
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
NAME = 'tiny-ViT'  # MODEL.NAME: files are <NAME>_<epoch>.pth and <NAME>_<stage>_state.pth


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    """(data root, tiny CLIP weights path)."""
    root = tmp_path_factory.mktemp('tiny_run')
    generate(str(root / 'data'), layouts=('market1501',), ids=12, per_camera=6, size=(64, 32),
             seed=0)
    return str(root / 'data'), str(save_tiny_clip(root / 'clip.pt', 'vit', 'state_dict'))


def train_opts(tiny, out, *extra):
    """KEY VALUE overrides for a short deterministic CPU run with PK batches of 8 (K=2)."""
    data, clip = tiny
    opts = {
        'MODEL.PRETRAIN_PATH': clip, 'MODEL.NAME': NAME, 'MODEL.DEVICE': 'cpu',
        'DATASETS.ROOT_DIR': data, 'OUTPUT_DIR': str(out),
        'INPUT.SIZE_TRAIN': '[64,32]', 'INPUT.SIZE_TEST': '[64,32]',
        'INPUT.PROB': '0', 'INPUT.RE_PROB': '0', 'INPUT.PADDING': '0',
        'DATALOADER.NUM_WORKERS': '0', 'DATALOADER.SAMPLER': 'softmax_triplet',
        'DATALOADER.NUM_INSTANCE': '2', 'TEST.IMS_PER_BATCH': '32',
        'SOLVER.DETERMINISTIC': 'True', 'SOLVER.ITERS': '4',
    }
    for solver in ('SOLVER', 'SOLVER.STAGE1', 'SOLVER.STAGE2'):
        opts.update({f'{solver}.IMS_PER_BATCH': '8', f'{solver}.MAX_EPOCHS': '2',
                     f'{solver}.CHECKPOINT_PERIOD': '1', f'{solver}.LOG_PERIOD': '1'})
        if solver == 'SOLVER.STAGE1':  # warmup then cosine
            opts[f'{solver}.WARMUP_EPOCHS'] = '1'
        else:  # warmup then steps, evaluation
            opts.update({f'{solver}.WARMUP_ITERS': '1', f'{solver}.EVAL_PERIOD': '100'})
    opts.update(zip(extra[0::2], map(str, extra[1::2])))
    return [str(x) for pair in opts.items() for x in pair]


def command(script, args, nproc=0, log_dir=None):
    launcher = []
    if nproc:
        launcher = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc)]
        if log_dir:  # each rank's stdout and stderr in its own file
            launcher += ['--log-dir', str(log_dir), '--redirects', '3']
    return [sys.executable, *launcher, script, *map(str, args)]


def run(script, args, nproc=0, log_dir=None, env=None, timeout=240):
    """Run an entry script (under torchrun with nproc > 0); the CompletedProcess with its
    output decoded as written (text mode would turn the bars' carriage returns into lines)."""
    proc = subprocess.run(command(script, args, nproc, log_dir), cwd=REPO, capture_output=True,
                          timeout=timeout, env={**ENV, **(env or {})})
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def run_ok(script, args, **kwargs):
    proc = run(script, args, **kwargs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_and_kill(script, args, marker, stderr_path, timeout=240):
    """Start a run and SIGKILL it as soon as a line containing `marker` reaches its stdout
    (the logger flushes every line); returns the lines it printed. The pipe is shrunk to one
    page and read without read-ahead, so the run blocks once it is 4 KB (about 30 log lines)
    ahead of this reader: however late the kill, it lands within 30 lines of the marker."""
    with open(stderr_path, 'wb') as err:
        proc = subprocess.Popen(command(script, args), cwd=REPO, env=ENV, bufsize=0,
                                stdout=subprocess.PIPE, stderr=err)
        fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        lines = []
        try:
            for line in iter(proc.stdout.readline, b''):
                lines.append(line.decode())
                if marker in lines[-1]:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait()
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and marker in lines[-1], \
        ''.join(lines[-20:]) + open(stderr_path).read()[-3000:]
    return lines


def weights(out, epoch):
    return torch.load(os.path.join(out, f'{NAME}_{epoch}.pth'), weights_only=True)


def state(out, stage):
    return torch.load(os.path.join(out, f'{NAME}_{stage}_state.pth'), weights_only=True)


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def screen_lines(text):
    """What a terminal shows of a stream: the text after the last carriage return of each
    line (progress bars redraw with '\\r'), blank lines dropped."""
    return [shown for line in text.split('\n') if (shown := line.split('\r')[-1].strip())]
