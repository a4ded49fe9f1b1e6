"""Shared pieces of the end-to-end tests: generated data and tiny CLIP files (made once per
session), configs derived from the real configs/ files, runs of the entry scripts (in a
subprocess or in-process) and reading their logs."""
import os
import re
import subprocess
import sys

import torch

from config import load_config
from datasets import make_dataloader
from datasets.demo_data import generate
from model import make_model
from model.tiny_clip import save_tiny_clip
from processor.cli import TRAINERS
from processor.inference import do_inference
from utils.metrics import make_evaluator
from utils.runtime import setup_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (64, 32)  # image [h, w]: 4 x 2 patches of the tiny ViT
_CACHE = {}


def _once(tmp_path_factory, key, make):
    """make(folder) once per session (the test modules share data and weights)."""
    if key not in _CACHE:
        _CACHE[key] = make(str(tmp_path_factory.mktemp('_'.join(map(str, key)))))
    return _CACHE[key]


def demo_root(tmp_path_factory, layouts=('market1501',), ids=60, seed=0,
              species=('yak', 'tiger', 'elephant')):
    """Folder holding the generated layouts (2 query cameras, 4 cameras x 3 images per id)."""
    def make(folder):
        generate(folder, layouts, ids=ids, seed=seed, size=SIZE, species=species)
        return folder
    return _once(tmp_path_factory, ('data', *layouts, ids, seed), make)


def tiny_clip(tmp_path_factory, arch='vit', seed=0):
    """Path of a tiny random CLIP (OpenAI state_dict layout, fp16 as OpenAI ships)."""
    return _once(tmp_path_factory, ('clip', arch, seed), lambda folder: save_tiny_clip(
        os.path.join(folder, f'tiny_{arch}.pt'), arch, 'state_dict', seed))


def config_path(name):
    return os.path.join(REPO, 'configs', name)


def small_opts(root, clip, out, *opts):
    """Overrides that turn a real config into a quick CPU run on the generated data."""
    h, w = SIZE
    return ['MODEL.PRETRAIN_PATH', clip, 'MODEL.DEVICE', 'cpu', 'DATASETS.ROOT_DIR', root,
            'INPUT.SIZE_TRAIN', f'[{h}, {w}]', 'INPUT.SIZE_TEST', f'[{h}, {w}]',
            'INPUT.PADDING', '4', 'DATALOADER.NUM_WORKERS', '0', 'TEST.IMS_PER_BATCH', '128',
            'SOLVER.AMP', 'off', 'OUTPUT_DIR', str(out), *map(str, opts)]


def load_cfg(config, root, clip, out, *opts):
    return load_config(config_path(config), small_opts(root, clip, out, *opts))


def run_script(script, config, opts, timeout=240):
    """Run an entry script of the repository; returns its output, failing with it."""
    # one thread: tiny models gain nothing from more, and busy cores make threads wait
    env = dict(os.environ, TQDM_DISABLE='1', PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1',
               MKL_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, script, '--config_file', config_path(config), *opts],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc.stdout


def build(cfg, seed=None):
    """(runtime, data, model) as the entry scripts build them; `seed` re-seeds the heads."""
    runtime = setup_run(cfg, 'train_log.txt')
    data = make_dataloader(cfg)
    if seed is not None:
        torch.manual_seed(seed)
    model = make_model(cfg, data.num_classes, data.camera_num, data.view_num,
                       object_word=data.dataset.object_word)
    return runtime, data, model.to(runtime.device)


def train(cfg, runtime, data, model):
    """The training recipe of cfg.MODEL.METHOD, in this process; returns the last trainer."""
    return TRAINERS[cfg.MODEL.METHOD](cfg, model, data, runtime)


def evaluate(cfg, runtime, data, model):
    evaluator = make_evaluator(cfg, data.num_query, data.dataset.protocol)
    return do_inference(cfg, model, data.val_loader, evaluator, runtime)


def clone_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_keys(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


_EPOCH = re.compile(r' (\w+) epoch (\d+) done in [\d.]+s \([\d.]+ samples/s\): loss ([\d.naif-]+)')
_ITER = re.compile(r' (\w+) epoch\[(\d+)\] iteration\[(\d+)\]')
_METRIC = re.compile(r' INFO: (\S+)\s+([\d.]+)%$')
_RESULTS = re.compile(r'Validation results \((.*)\):$')  # (protocol, distance, re-ranking)


def epoch_losses(log, stage):
    """Mean loss of each epoch of `stage`, in order, from a log text."""
    return [float(m.group(3)) for m in _EPOCH.finditer(log) if m.group(1) == stage]


def logged_iterations(log, stage):
    """{epoch: [iteration numbers logged]} (LOG_PERIOD 1 logs every iteration)."""
    out = {}
    for m in _ITER.finditer(log):
        if m.group(1) == stage:
            out.setdefault(int(m.group(2)), []).append(int(m.group(3)))
    return out


def logged_results(log):
    """Every 'Validation results (...):' block of a log as {name: fraction}, in order."""
    blocks = []
    for line in log.splitlines():
        if _RESULTS.search(line):
            blocks.append({})
        elif blocks and (m := _METRIC.search(line)):
            blocks[-1][m.group(1)] = float(m.group(2)) / 100
    return blocks


def read_log(folder, name='train_log.txt'):
    with open(os.path.join(folder, name)) as f:
        return f.read()
