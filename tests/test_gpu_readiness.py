"""What a GPU user hits first, checked on the CPU: resuming across precisions and device
counts, SOLVER.AMP 'auto' on cards with emulated bf16, device placement under launchers,
determinism settings, and a step loop that only reads the GPU every LOG_PERIOD steps."""
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from config import load_config
from processor.engine import Trainer
from solver import make_optimizer, make_scheduler
from utils import checkpoint, distributed, runtime
from utils.checkpoint import load_training_state, state_path
from utils.errors import ReIDError

AMPS = {'off': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


class ToyTrainer(Trainer):
    """A linear model on fixed batches; `losses` may inject a non-finite value."""
    stage = 'toy'

    def __init__(self, cfg, amp, batches=4, losses=None):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        optimizer, _ = make_optimizer(cfg.SOLVER, model)
        scheduler = make_scheduler(cfg.SOLVER, optimizer, 'multistep')
        rt = SimpleNamespace(device=torch.device('cpu'), amp_dtype=amp, rank=0, world_size=1)
        super().__init__(cfg, cfg.SOLVER, model, optimizer, scheduler, rt, None)
        gen = torch.Generator().manual_seed(1)
        self.data_batches = [(torch.randn(8, 4, generator=gen), torch.arange(8) % 2)
                             for _ in range(batches)]
        self.losses = losses or {}
        self.curves = SimpleNamespace(add=lambda *args: None)  # run() makes the real one

    def batches(self, epoch):
        return self.data_batches

    def train_step(self, batch):
        x, y = batch
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        if self.iteration + 1 in self.losses:
            loss = loss * self.losses[self.iteration + 1]
        return loss, {'acc': (logits.argmax(1) == y).float().mean()}


def _cfg(tmp_path, *opts):
    return load_config('', ['OUTPUT_DIR', str(tmp_path), 'MODEL.NAME', 'toy',
                            'SOLVER.OPTIMIZER_NAME', 'SGD', 'SOLVER.LOG_PERIOD', '1000',
                            *map(str, opts)])


@pytest.mark.parametrize('saved', list(AMPS))
@pytest.mark.parametrize('resumed', list(AMPS))
def test_any_precision_resumes_into_any_other(tmp_path, saved, resumed):
    cfg = _cfg(tmp_path)
    first = ToyTrainer(cfg, AMPS[saved])
    first.train_epoch(1)
    if saved == 'fp16':
        first.scaler.update(new_scale=1024.0)
    first.save_checkpoint(1)
    state = load_training_state(state_path(cfg.OUTPUT_DIR, 'toy', 'toy'))
    state['rng']['cuda'] = [torch.zeros(16, dtype=torch.uint8)] * 8  # an 8-GPU run's file
    second = ToyTrainer(cfg, AMPS[resumed])
    assert second.load_state(state) == 2
    assert torch.equal(second.model.weight, first.model.weight)
    if resumed == 'fp16':  # the saved scale when there is one, else a fresh one
        assert second.scaler.get_scale() == (1024.0 if saved == 'fp16' else 65536.0)
    second.train_epoch(2)


def test_cuda_generator_states_are_neither_saved_nor_restored(monkeypatch):
    assert 'cuda' not in checkpoint.rng_state()
    state = checkpoint.rng_state()
    state['cuda'] = [torch.zeros(16, dtype=torch.uint8)] * 4

    def refuse(_):
        raise RuntimeError('more states than devices')

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'set_rng_state_all', refuse)
    checkpoint.set_rng_state(state)  # a 4-GPU file on a 1-GPU (here: no-GPU) machine


def test_amp_auto_takes_fp16_where_bf16_is_only_emulated(monkeypatch):
    cfg = load_config('', ['SOLVER.AMP', 'auto'])
    emulated = {'V100': lambda including_emulation=True: including_emulation,
                'A100': lambda including_emulation=True: True}
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', emulated['V100'])
    assert runtime._amp_dtype(cfg, torch.device('cuda')) is torch.float16
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', emulated['A100'])
    assert runtime._amp_dtype(cfg, torch.device('cuda')) is torch.bfloat16


def test_one_gpu_per_process_launchers(monkeypatch):
    chosen = []
    monkeypatch.setenv('RANK', '3')
    monkeypatch.setenv('WORLD_SIZE', '4')
    monkeypatch.setenv('LOCAL_RANK', '3')
    monkeypatch.setattr(distributed, 'is_dist', lambda: False)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'set_device', chosen.append)
    monkeypatch.setattr(distributed.dist, 'init_process_group', lambda backend: None)
    monkeypatch.setattr(distributed.atexit, 'register', lambda f: None)
    distributed.init_distributed('cuda')
    assert chosen == [0]  # LOCAL_RANK 3 of a launcher that shows each process one GPU


def test_device_id_that_cannot_apply_is_reported(monkeypatch):
    cfg = load_config('', ['MODEL.DEVICE_ID', '2'])
    monkeypatch.delenv('RANK', raising=False)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '1')
    assert 'is already' in runtime._apply_device_id(cfg)
    assert os.environ['CUDA_VISIBLE_DEVICES'] == '1'
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES')
    assert runtime._apply_device_id(cfg) == '' and os.environ['CUDA_VISIBLE_DEVICES'] == '2'
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '2')
    assert 'torchrun' in runtime._apply_device_id(cfg)
    assert runtime._apply_device_id(load_config('', [])) == ''  # the default: nothing to say


def test_deterministic_runs_configure_cublas(tmp_path, monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    monkeypatch.setattr(torch, 'use_deterministic_algorithms', lambda *a, **k: None)
    cfg = load_config('', ['MODEL.DEVICE', 'cpu', 'SOLVER.DETERMINISTIC', 'True',
                           'OUTPUT_DIR', str(tmp_path)])
    try:
        runtime.setup_run(cfg, 'log.txt')
        assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
    finally:
        runtime.setup_logger('', 'log.txt')  # close the log file handler


def _host_reads(monkeypatch, trainer):
    """How often train_epoch reads a tensor's value on the host."""
    count = [0]
    for name in ('item', 'tolist', 'cpu'):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            count[0] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    trainer.train_epoch(1)
    monkeypatch.undo()
    return count[0]


def test_the_step_loop_reads_values_only_at_log_time(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    short, long = ToyTrainer(cfg, None, batches=3), ToyTrainer(cfg, None, batches=12)
    assert _host_reads(monkeypatch, short) == _host_reads(monkeypatch, long)
    logged = ToyTrainer(_cfg(tmp_path, 'SOLVER.LOG_PERIOD', 3), None, batches=12)
    assert _host_reads(monkeypatch, logged) > _host_reads(monkeypatch, long)


@pytest.mark.parametrize('log_period', [1, 5, 100])
def test_a_non_finite_loss_stops_the_epoch_naming_its_step(tmp_path, log_period):
    cfg = _cfg(tmp_path, 'SOLVER.LOG_PERIOD', log_period)
    trainer = ToyTrainer(cfg, None, batches=8, losses={3: float('nan'), 6: float('inf')})
    with pytest.raises(ReIDError, match='the loss is nan at epoch 1, iteration 3; training '
                                        'stopped \\(no checkpoint was written yet\\)'):
        trainer.train_epoch(1)
    assert not os.path.exists(state_path(cfg.OUTPUT_DIR, 'toy', 'toy'))
