"""Precision as upstream: mixed precision for training only, losses and evaluation in float32.

PyTorch autocasts on the CPU too, so SOLVER.AMP bf16 / fp16 run here and these tests see the
same code paths as a GPU run.
"""
from types import SimpleNamespace

import pytest
import torch

from _model_fixtures import build, images, tiny_clip_files  # noqa: F401 (fixture)
from config import load_config
from loss import (CameraProxyMemory, CenterLoss, ClusterMemory, CrossEntropyLabelSmooth,
                  SupConLoss, TripletLoss, image_to_text_logits)
from processor.engine import Trainer
from processor.inference import do_inference
from utils.runtime import _amp_dtype

GEN = torch.Generator().manual_seed(0)
FEATS = torch.randn(8, 16, generator=GEN)
OTHER = torch.randn(8, 16, generator=GEN)
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _memory():
    memory = ClusterMemory(16, 4)
    memory.build(torch.randn(4, 16, generator=torch.Generator().manual_seed(1)))
    return memory


def _proxies():
    memory = CameraProxyMemory(16, [0, 0, 1, 1, 2, 3, 3, 3], [0, 1, 0, 1, 0, 0, 1, 2],
                               negatives=3, positives=2)
    memory.build(torch.randn(8, 16, generator=torch.Generator().manual_seed(3)))
    return memory


def _center():
    torch.manual_seed(2)
    return CenterLoss(4, 16)


LOSSES = {
    'triplet': lambda a, b: TripletLoss(0.3)(a, LABELS)[0],
    'soft_triplet': lambda a, b: TripletLoss(None)(a, LABELS)[0],
    'supcon': lambda a, b: SupConLoss()(a, b, LABELS, LABELS),
    'memory': lambda a, b: _memory()(a, LABELS),
    'camera_proxy': lambda a, b: _proxies()(a, LABELS * 2),
    'i2t_logits': image_to_text_logits,
    'id_smooth': lambda a, b: CrossEntropyLabelSmooth(4)(a[:, :4], LABELS),
    'center': lambda a, b: _center()(a, LABELS),
}


@pytest.mark.parametrize('name', list(LOSSES))
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_loss_arithmetic_stays_float32_under_autocast(name, dtype):
    loss = LOSSES[name]
    expected = loss(FEATS, OTHER)
    with torch.autocast('cpu', dtype=dtype):
        # the network hands over low-precision activations: the loss lifts them
        got = loss(FEATS.to(dtype), OTHER.to(dtype))
        plain = FEATS.to(dtype) @ OTHER.to(dtype).t()
    assert got.dtype == torch.float32
    low = (FEATS.to(dtype).float(), OTHER.to(dtype).float())
    assert torch.equal(got, loss(*low))  # the only difference is the inputs' own rounding
    assert plain.dtype == dtype  # what an unprotected matmul would have given


def test_loss_gradients_flow_back_to_low_precision_activations():
    x = FEATS.to(torch.bfloat16).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        TripletLoss(0.3)(x, LABELS)[0].backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0


@pytest.mark.parametrize('choice,device,expected', [
    ('bf16', 'cpu', torch.bfloat16), ('fp16', 'cpu', torch.float16), ('auto', 'cpu', None),
    ('off', 'cpu', None), ('fp16', 'cuda', torch.float16), ('off', 'cuda', None)])
def test_solver_amp_choices(choice, device, expected):
    cfg = load_config('', ['SOLVER.AMP', choice])
    assert _amp_dtype(cfg, torch.device(device)) is expected


@pytest.mark.parametrize('amp,scaled', [(torch.float16, True), (torch.bfloat16, False),
                                        (None, False)])
def test_grad_scaler_runs_on_the_training_device_for_fp16_only(amp, scaled):
    cfg = load_config('', [])
    runtime = SimpleNamespace(device=torch.device('cpu'), amp_dtype=amp, rank=0, world_size=1)
    trainer = Trainer(cfg, cfg.SOLVER, None, None, None, runtime, None)
    assert trainer.scaler.is_enabled() is scaled
    with trainer.autocast():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == (amp or torch.float32)


class _Collect:
    def reset(self):
        self.feats = []

    def update(self, item):
        self.feats.append(item[0])

    def compute(self):
        return SimpleNamespace(summary=lambda: {}, extra={}, skipped_queries=0)

    def describe(self):
        return 'collected'


@pytest.mark.parametrize('arch', ['vit', 'rn'])
def test_evaluation_features_are_float32_whatever_solver_amp(tiny_clip_files, arch):
    """The same checkpoint gives bit-identical test features with AMP off, bf16 or fp16."""
    model = build(tiny_clip_files[arch, 'state_dict'], 'clipreid', 5).eval()
    x = images(6)
    batch = (x, torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long),
             torch.zeros(6, dtype=torch.long), [f'{i}.jpg' for i in range(6)])
    cfg = load_config('', [])
    feats = {}
    for amp in (None, torch.bfloat16, torch.float16):
        runtime = SimpleNamespace(device=torch.device('cpu'), amp_dtype=amp, rank=0,
                                  world_size=1)
        evaluator = _Collect()
        with torch.autocast('cpu', dtype=torch.bfloat16):  # even inside a caller's autocast
            do_inference(cfg, model, [batch], evaluator, runtime)
        feats[amp] = torch.cat(evaluator.feats)
    assert feats[None].dtype == torch.float32
    assert torch.equal(feats[None], feats[torch.bfloat16])
    assert torch.equal(feats[None], feats[torch.float16])
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert not torch.equal(model(x).float(), feats[None])  # autocast would change them
