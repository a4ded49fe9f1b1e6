"""Optimizer parameter groups and per-epoch learning rates against hand-worked values."""
from bisect import bisect_right

import pytest
import torch
import torch.nn as nn

from config import load_config
from loss import CenterLoss
from solver import make_optimizer, make_scheduler
from utils.errors import ReIDError


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 2)              # weight + bias
        self.classifier = nn.Linear(2, 3, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _solver(*opts):
    return load_config('', list(opts)).SOLVER


def test_param_groups_lr_and_weight_decay():
    solver = _solver('SOLVER.BASE_LR', '0.01', 'SOLVER.BIAS_LR_FACTOR', '2',
                     'SOLVER.WEIGHT_DECAY', '0.0005', 'SOLVER.WEIGHT_DECAY_BIAS', '0.0001',
                     'SOLVER.LARGE_FC_LR', 'True', 'SOLVER.OPTIMIZER_NAME', 'SGD',
                     'SOLVER.MOMENTUM', '0.8')
    model = TinyModel()
    optimizer, center_optimizer = make_optimizer(solver, model)
    assert isinstance(optimizer, torch.optim.SGD) and center_optimizer is None
    # one group per (lr, weight decay); here each tensor has its own; frozen ones are left out
    got = [(g['params'][0] is p, g['lr'], g['weight_decay'], g['momentum'])
           for g, p in zip(optimizer.param_groups,
                           [model.backbone.weight, model.backbone.bias, model.classifier.weight])]
    assert got == [(True, 0.01, 0.0005, 0.8),   # weight: BASE_LR, WEIGHT_DECAY
                   (True, 0.02, 0.0001, 0.8),   # bias: 0.01 * 2, WEIGHT_DECAY_BIAS
                   (True, 0.02, 0.0005, 0.8)]   # classifier with LARGE_FC_LR: 2 * 0.01
    assert len(optimizer.param_groups) == 3


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)
        self.classifier = nn.Linear(3, 2, bias=False)


@pytest.mark.parametrize('name', ['Adam', 'AdamW', 'SGD'])
def test_merged_groups_train_as_per_tensor_groups(name):
    """Upstream's one group per tensor and the merged (lr, weight decay) groups give the
    same weights after several steps."""
    solver = _solver('SOLVER.BASE_LR', '0.01', 'SOLVER.BIAS_LR_FACTOR', '2',
                     'SOLVER.WEIGHT_DECAY', '0.0005', 'SOLVER.WEIGHT_DECAY_BIAS', '0.0001',
                     'SOLVER.LARGE_FC_LR', 'True', 'SOLVER.OPTIMIZER_NAME', name)
    merged_model, per_tensor_model = TwoLayers(), TwoLayers()
    merged, _ = make_optimizer(solver, merged_model)
    # weights of a and b share a group, so do their biases; the classifier has its own
    assert [len(g['params']) for g in merged.param_groups] == [2, 2, 1]
    params = [list(m.parameters()) for m in (merged_model, per_tensor_model)]
    twin = {id(a): b for a, b in zip(*params)}
    per_tensor = type(merged)(
        [{'params': [twin[id(p)]], 'lr': g['lr'], 'weight_decay': g['weight_decay']}
         for g in merged.param_groups for p in g['params']],
        **({'momentum': 0.9} if name == 'SGD' else {}))
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 2
    for _ in range(5):
        for model, optimizer in ((merged_model, merged), (per_tensor_model, per_tensor)):
            optimizer.zero_grad()
            out = model.classifier(model.b(model.a(x)).relu())
            nn.functional.cross_entropy(out, y).backward()
            optimizer.step()
    for a, b in zip(*params):
        assert torch.allclose(a, b, rtol=0, atol=1e-7)
    assert not torch.equal(params[0][0], TwoLayers().a.weight)  # they did train


def test_every_stage_takes_its_own_sgd_momentum():
    solver = _solver('SOLVER.STAGE1.OPTIMIZER_NAME', 'SGD', 'SOLVER.STAGE1.MOMENTUM', '0.7',
                     'SOLVER.STAGE2.OPTIMIZER_NAME', 'SGD', 'SOLVER.STAGE2.MOMENTUM', '0.8')
    for node, momentum in ((solver.STAGE1, 0.7), (solver.STAGE2, 0.8)):
        optimizer, _ = make_optimizer(node, TinyModel())
        assert {g['momentum'] for g in optimizer.param_groups} == {momentum}


def test_optimizer_names_and_center_optimizer():
    center = CenterLoss(3, 2)
    solver = _solver('SOLVER.STAGE2.OPTIMIZER_NAME', 'AdamW', 'SOLVER.STAGE2.CENTER_LR', '0.5')
    optimizer, center_optimizer = make_optimizer(solver.STAGE2, TinyModel(), center)
    assert type(optimizer) is torch.optim.AdamW
    assert isinstance(center_optimizer, torch.optim.SGD)
    assert center_optimizer.param_groups[0]['lr'] == 0.5
    assert center_optimizer.param_groups[0]['params'][0] is center.centers
    for name in ('Adam', 'RMSprop'):
        opt, _ = make_optimizer(_solver('SOLVER.OPTIMIZER_NAME', name), TinyModel())
        assert type(opt).__name__ == name
    with pytest.raises(ReIDError, match="OPTIMIZER_NAME='Sgd'"):
        make_optimizer(_solver('SOLVER.OPTIMIZER_NAME', 'Sgd'), TinyModel())


def _lrs(scheduler, optimizer, epochs, group=0):
    out = {}
    for epoch in range(1, max(epochs) + 1):
        scheduler.step(epoch)
        out[epoch] = optimizer.param_groups[group]['lr']
    return [out[e] for e in epochs]


def _stage2():
    # CLIP-ReID ViT stage 2: BASE_LR 5e-6, bias x2, warmup 10 epochs from 0.1, steps 30/50
    return _solver('SOLVER.STAGE2.BASE_LR', '5e-6', 'SOLVER.STAGE2.BIAS_LR_FACTOR', '2',
                   'SOLVER.STAGE2.WARMUP_FACTOR', '0.1', 'SOLVER.STAGE2.WARMUP_ITERS', '10',
                   'SOLVER.STAGE2.STEPS', '[30, 50]', 'SOLVER.STAGE2.GAMMA', '0.1').STAGE2


def test_warmup_multistep_hand_values():
    solver = _stage2()
    optimizer, _ = make_optimizer(solver, TinyModel())
    scheduler = make_scheduler(solver, optimizer, 'multistep')
    assert optimizer.param_groups[0]['lr'] == pytest.approx(5e-7)  # at construction: 0.1 * base
    epochs = [1, 5, 9, 10, 29, 30, 49, 50, 60]
    # factor(e) = 0.1 (1 - e/10) + e/10 for e < 10:  e=1: 0.19, e=5: 0.55, e=9: 0.91
    # then 1, x0.1 from epoch 30, x0.01 from epoch 50
    expected = [0.95e-6, 2.75e-6, 4.55e-6, 5e-6, 5e-6, 5e-7, 5e-7, 5e-8, 5e-8]
    assert _lrs(scheduler, optimizer, epochs) == pytest.approx(expected, rel=1e-9)
    # the bias group (base 1e-5) follows the same factors: epoch 1 -> 1.9e-6
    scheduler.step(1)
    assert optimizer.param_groups[1]['lr'] == pytest.approx(1.9e-6, rel=1e-9)


def test_warmup_multistep_lag_and_constant():
    solver = _stage2()
    optimizer, _ = make_optimizer(solver, TinyModel())
    lagged = make_scheduler(solver, optimizer, 'multistep', lag=1)
    # PCL-CLIP steps after the epoch: epoch e uses factor(e - 1): e=1: 0.1, e=2: 0.19, e=31: 0.1
    assert _lrs(lagged, optimizer, [1, 2, 11, 30, 31]) == pytest.approx(
        [5e-7, 0.95e-6, 5e-6, 5e-6, 5e-7], rel=1e-9)
    constant = load_config('', ['SOLVER.WARMUP_METHOD', 'constant', 'SOLVER.WARMUP_ITERS', '3',
                                'SOLVER.WARMUP_FACTOR', '0.01', 'SOLVER.BASE_LR', '0.1',
                                'SOLVER.STEPS', '[4]']).SOLVER
    optimizer, _ = make_optimizer(constant, TinyModel())
    scheduler = make_scheduler(constant, optimizer, 'multistep')
    # 0.01 * 0.1 for epochs 1, 2; 0.1 at 3; 0.01 from epoch 4
    assert _lrs(scheduler, optimizer, [1, 2, 3, 4]) == pytest.approx([1e-3, 1e-3, 0.1, 0.01])


class UpstreamWarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """Reference: the torch scheduler upstream uses, stepped with no argument."""

    def __init__(self, optimizer, milestones, gamma, warmup_factor, warmup_iters):
        self.milestones, self.gamma = milestones, gamma
        self.warmup_factor, self.warmup_iters = warmup_factor, warmup_iters
        super().__init__(optimizer, -1)

    def get_lr(self):
        factor = 1
        if self.last_epoch < self.warmup_iters:
            alpha = self.last_epoch / self.warmup_iters
            factor = self.warmup_factor * (1 - alpha) + alpha
        return [lr * factor * self.gamma ** bisect_right(self.milestones, self.last_epoch)
                for lr in self.base_lrs]


@pytest.mark.filterwarnings('ignore:Detected call of')
@pytest.mark.parametrize('lag', [0, 1])
def test_multistep_reproduces_upstream_loops(lag):
    solver = _stage2()
    ours_opt, _ = make_optimizer(solver, TinyModel())
    ref_opt, _ = make_optimizer(solver, TinyModel())
    ours = make_scheduler(solver, ours_opt, 'multistep', lag=lag)
    ref = UpstreamWarmupMultiStepLR(ref_opt, [30, 50], 0.1, 0.1, 10)
    for epoch in range(1, 61):
        ours.step(epoch)
        if lag == 0:
            ref.step()          # CLIP-ReID / baseline: step at the start of the epoch
        assert ours_opt.param_groups[0]['lr'] == pytest.approx(ref_opt.param_groups[0]['lr'])
        if lag == 1:
            ref.step()          # PCL-CLIP: step after the epoch


def _stage1():
    return _solver('SOLVER.STAGE1.BASE_LR', '0.00035', 'SOLVER.STAGE1.WARMUP_LR_INIT', '0.00001',
                   'SOLVER.STAGE1.LR_MIN', '1e-6', 'SOLVER.STAGE1.WARMUP_EPOCHS', '5',
                   'SOLVER.STAGE1.MAX_EPOCHS', '120').STAGE1


def test_warmup_cosine_hand_values():
    solver = _stage1()
    optimizer, _ = make_optimizer(solver, TinyModel())
    scheduler = make_scheduler(solver, optimizer, 'cosine')
    assert optimizer.param_groups[0]['lr'] == pytest.approx(1e-5)  # warmup_lr_init at start
    # warmup: 1e-5 + e * (3.5e-4 - 1e-5) / 5 -> e=1: 7.8e-5, e=4: 2.82e-4
    # cosine from e=5 (t not shifted): 1e-6 + 0.5 * 3.49e-4 * (1 + cos(pi e / 120))
    #   e=5: cos(pi/24) = 0.991445 -> 3.485071e-4;  e=60: cos(pi/2) = 0 -> 1.755e-4
    # e=120: past the single cycle -> lr_min 1e-6
    epochs = [1, 4, 5, 60, 120]
    expected = [7.8e-5, 2.82e-4, 3.4850712831e-4, 1.755e-4, 1e-6]
    assert _lrs(scheduler, optimizer, epochs) == pytest.approx(expected, rel=1e-9)
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-6)


@pytest.mark.parametrize('kind', ['multistep', 'cosine'])
def test_scheduler_state_round_trip(kind):
    """A resumed run's scheduler takes the saved schedule, even where the new one was built
    differently: stepping alone would not give these learning rates."""
    solver = _stage1() if kind == 'cosine' else _stage2()
    optimizer, _ = make_optimizer(solver, TinyModel())
    scheduler = make_scheduler(solver, optimizer, kind)
    for epoch in range(1, 8):
        scheduler.step(epoch)
    state = scheduler.state_dict()
    assert 'optimizer' not in state
    if kind == 'cosine':
        other = _solver('SOLVER.STAGE1.BASE_LR', '0.5', 'SOLVER.STAGE1.MAX_EPOCHS', '9',
                        'SOLVER.STAGE1.LR_MIN', '0.1', 'SOLVER.STAGE1.WARMUP_EPOCHS', '0').STAGE1
    else:
        other = _solver('SOLVER.BASE_LR', '0.5', 'SOLVER.BIAS_LR_FACTOR', solver.BIAS_LR_FACTOR,
                        'SOLVER.STEPS', '[2, 3]', 'SOLVER.GAMMA', '0.5',
                        'SOLVER.WARMUP_ITERS', '0')
    fresh_opt, _ = make_optimizer(other, TinyModel())
    fresh = make_scheduler(other, fresh_opt, kind)
    fresh.step(8)
    own = fresh.get_last_lr()
    fresh.load_state_dict(state)
    for epoch in (8, 9, 40, 130):
        scheduler.step(epoch)
        fresh.step(epoch)
        assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr(), rel=1e-12)
        if epoch == 8:
            assert fresh.get_last_lr() != pytest.approx(own)  # the state made the difference


def test_scheduler_rejects_bad_config():
    solver = _solver('SOLVER.WARMUP_METHOD', 'cosine')
    optimizer, _ = make_optimizer(solver, TinyModel())
    with pytest.raises(ReIDError, match='WARMUP_METHOD'):
        make_scheduler(solver, optimizer, 'multistep')
    with pytest.raises(ValueError, match='kind'):
        make_scheduler(solver, optimizer, 'poly')
