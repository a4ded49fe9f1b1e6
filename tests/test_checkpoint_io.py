"""Atomic writes, training-state round trips and the epoch batch iterator."""
import os
import random

import numpy as np
import pytest
import torch

from processor.batches import EpochBatches
from utils.checkpoint import (atomic_save, find_resume_file, load_training_state, rng_state,
                              set_rng_state)
from utils.errors import ReIDError


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / 'w.pth'
    atomic_save({'a': torch.ones(2)}, path)

    def broken_save(obj, f):
        f.write(b'partial')
        raise RuntimeError('disk full')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(RuntimeError):
        atomic_save({'a': torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)['a'], torch.ones(2))
    assert os.listdir(tmp_path) == ['w.pth']  # no temporary file left behind


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    atomic_save({'model': {}, 'epoch': 3, 'rng': state}, tmp_path / 'x_state.pth')
    loaded = load_training_state(tmp_path / 'x_state.pth')
    set_rng_state(loaded['rng'])
    assert random.random() == expected[0] and np.random.rand() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_foreign_or_truncated_state_files_are_refused(tmp_path):
    (tmp_path / 'bad_state.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ReIDError, match='cannot read training state'):
        load_training_state(tmp_path / 'bad_state.pth')
    torch.save({'weights': 1}, tmp_path / 'other.pth')
    with pytest.raises(ReIDError, match='not a training-state file'):
        load_training_state(tmp_path / 'other.pth')


class _Cfg:
    class SOLVER:
        RESUME = ''
    OUTPUT_DIR = ''


def test_resume_file_lookup(tmp_path):
    cfg = _Cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    assert find_resume_file(cfg, resume_flag=False) is None
    with pytest.raises(ReIDError, match='no \\*_state.pth training state'):
        find_resume_file(cfg, resume_flag=True)
    (tmp_path / 'ViT_stage1_state.pth').write_bytes(b'1')
    newer = tmp_path / 'ViT_stage2_state.pth'
    newer.write_bytes(b'2')
    os.utime(newer, (2e9, 2e9))
    assert find_resume_file(cfg, resume_flag=True) == str(newer)


class _Sampler:
    def __init__(self):
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(3))


class _Loader:
    def __init__(self):
        self.sampler = _Sampler()

    def __len__(self):
        return 3

    def __iter__(self):
        return iter(self.sampler)


def test_epoch_batches_cycle_fresh_passes_up_to_the_limit():
    loader = _Loader()
    assert list(EpochBatches(loader, epoch=2, limit=7)) == [0, 1, 2, 0, 1, 2, 0]
    assert loader.sampler.epochs == [2000, 2001, 2002]
    loader.sampler.epochs.clear()
    assert list(EpochBatches(loader, epoch=5)) == [0, 1, 2] and loader.sampler.epochs == [5]
