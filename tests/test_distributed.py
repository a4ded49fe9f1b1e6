"""DDP on the CPU: two gloo processes under torchrun give the single-process result.

With one global batch split in two equal shards the losses compared here decompose: the
identity, PCL and image-to-text cross-entropies are per-sample means (DDP averages the two
shard means' gradients; the center loss too, its centers' gradients averaged by the trainer),
the PCL memory is updated by every rank from the all-gathered batch, and CLIP-ReID stage 1
computes the whole global batch on every rank. Nothing else may differ:
no augmentation, MODEL.NECK 'no' (no BatchNorm, whose statistics would be per rank), no
triplet loss (batch-hard mining within a shard is not mining within the batch), and SGD
(Adam turns float noise on zero-gradient weights, e.g. attention key biases, into full steps).
Evaluation gathers the ranks' shards: the distance matrices must agree too.
"""
import glob
import os

import numpy as np
import pytest
import torch

from _run_helpers import (NAME, max_difference, run_ok, state, tiny_run,  # noqa: F401
                          train_opts, weights)
from config import load_config
from utils import distributed as du
from utils.errors import ReIDError
from utils.runtime import setup_run

EXACT = ('MODEL.NECK', 'no', 'MODEL.TRIPLET_LOSS_WEIGHT', 0, 'TEST.DIST_MAT', 'dist.npy')


def _single_and_ddp(tmp_path, tiny, script, *opts):
    for name, nproc in (('single', 0), ('ddp', 2)):
        log_dir = tmp_path / 'ranks' if nproc else None
        run_ok(script, train_opts(tiny, tmp_path / name, *EXACT, *opts), nproc=nproc,
               log_dir=log_dir)
    return str(tmp_path / 'single'), str(tmp_path / 'ddp')


def _assert_same_run(single, ddp, last_epoch):
    trained = max_difference(weights(single, last_epoch), weights(single, 1))
    assert trained > 1e-3  # the comparison below is meaningful
    assert max_difference(weights(single, last_epoch), weights(ddp, last_epoch)) < 1e-5
    dist = [np.load(os.path.join(out, 'dist.npy')) for out in (single, ddp)]
    assert dist[0].shape == (12, 136)  # 12 queries; 132 gallery images + 4 distractors
    np.testing.assert_allclose(dist[0], dist[1], atol=2e-4)
    results = [[line.split('INFO: ')[1] for line in open(os.path.join(out, 'train_log.txt'))
                if 'mAP ' in line or 'Rank-1 ' in line] for out in (single, ddp)]
    assert len(results[0]) == 2 and results[0] == results[1]


def _rank_output(log_dir, rank):
    files = glob.glob(os.path.join(log_dir, '*', 'attempt_0', str(rank), 'std*.log'))
    assert len(files) == 2
    return {os.path.basename(f): open(f).read() for f in files}


def test_pcl_two_processes_equal_one(tmp_path, tiny_run):
    single, ddp = _single_and_ddp(tmp_path, tiny_run, 'train_pcl.py', 'SOLVER.OPTIMIZER_NAME',
                                  'SGD', 'SOLVER.BASE_LR', 0.05, 'SOLVER.EVAL_PERIOD', 2)
    _assert_same_run(single, ddp, 2)
    states = state(single, 'pcl'), state(ddp, 'pcl')
    assert states[0]['iteration'] == states[1]['iteration'] == 8
    memory = [s['extra']['memory']['features'] for s in states]
    assert torch.allclose(memory[0], memory[1], atol=1e-5)
    # only rank 0 writes logs, bars and files; rank 1 prints nothing at all
    assert _rank_output(tmp_path / 'ranks', 1) == {'stdout.log': '', 'stderr.log': ''}
    rank0 = _rank_output(tmp_path / 'ranks', 0)
    assert 'Running on cpu (2 processes)' in rank0['stdout.log']
    assert 'pcl epoch 2' in rank0['stderr.log']  # its progress bar
    assert sorted(os.listdir(ddp)) == sorted(os.listdir(single))


def test_clipreid_two_processes_equal_one(tmp_path, tiny_run):
    single, ddp = _single_and_ddp(tmp_path, tiny_run, 'train_clipreid.py',
                                  'SOLVER.STAGE2.OPTIMIZER_NAME', 'SGD', 'SOLVER.STAGE2.BASE_LR',
                                  0.01, 'SOLVER.STAGE2.EVAL_PERIOD', 2)
    _assert_same_run(single, ddp, 2)
    prompts = [torch.load(os.path.join(out, f'{NAME}_stage1_2.pth'), weights_only=True)
               ['prompt_learner.cls_ctx'] for out in (single, ddp)]
    assert torch.allclose(prompts[0], prompts[1], atol=1e-6)


def test_baseline_with_center_loss_two_processes_equal_one(tmp_path, tiny_run):
    """The centers are outside the DDP model: their gradients are averaged by the trainer."""
    single, ddp = _single_and_ddp(tmp_path, tiny_run, 'train.py', 'SOLVER.OPTIMIZER_NAME', 'SGD',
                                  'SOLVER.BASE_LR', 0.05, 'SOLVER.EVAL_PERIOD', 2,
                                  'MODEL.IF_WITH_CENTER', 'yes')
    _assert_same_run(single, ddp, 2)
    centers = [state(out, 'baseline')['loss']['center.centers'] for out in (single, ddp)]
    assert torch.allclose(centers[0], centers[1], atol=1e-5)


def test_sync_bn_is_refused_on_the_cpu_before_anything_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(du, 'launched_by_torchrun', lambda: True)
    monkeypatch.setattr(du, 'init_distributed', lambda device: pytest.fail('joined a group'))
    cfg = load_config('', ['MODEL.SYNC_BN', 'True', 'MODEL.DEVICE', 'cpu',
                           'OUTPUT_DIR', str(tmp_path / 'out')])
    with pytest.raises(ReIDError, match='MODEL.SYNC_BN needs CUDA'):
        setup_run(cfg, 'train_log.txt')
    assert not (tmp_path / 'out').exists()


def test_unsupervised_pcl_two_processes_equal_one(tmp_path, tiny_run):
    """Rank 0 clusters and broadcasts the pseudo-labels; the ranks train as one process."""
    single, ddp = _single_and_ddp(tmp_path, tiny_run, 'train_pcl.py', 'MODEL.UNSUPERVISED', True,
                                  'CLUSTER.K1', 10, 'CLUSTER.K2', 3, 'CLUSTER.EPS', 0.5,
                                  'SOLVER.OPTIMIZER_NAME', 'SGD', 'SOLVER.BASE_LR', 0.05,
                                  'SOLVER.EVAL_PERIOD', 2)
    _assert_same_run(single, ddp, 2)
    states = state(single, 'pcl_unsup'), state(ddp, 'pcl_unsup')
    labels = [s['extra']['pseudo_labels'] for s in states]
    assert torch.equal(labels[0], labels[1]) and labels[0].max() >= 3
    assert _rank_output(tmp_path / 'ranks', 1) == {'stdout.log': '', 'stderr.log': ''}
    logged = open(os.path.join(ddp, 'train_log.txt')).read()
    assert logged.count('clustering before epoch') == 2
