"""Epoch-wise learning-rate schedules with one contract: ``step(epoch)`` is called at the
start of epoch ``epoch`` (1-based) and sets that epoch's learning rates."""
from bisect import bisect_right

from timm.scheduler import CosineLRScheduler

from utils.errors import ReIDError


class WarmupMultiStepLR:
    """TransReID's WarmupMultiStepLR, by epoch.

    The factor for index e is  w(e) * gamma ** bisect_right(milestones, e), with
    w(e) = warmup_factor * (1 - e / warmup_iters) + e / warmup_iters ('linear') or
    warmup_factor ('constant') while e < warmup_iters, else 1.
    Upstream builds the torch scheduler (last_epoch=-1, so index 0 at construction) and
    calls scheduler.step() at the start of every epoch, so epoch e runs with index e.
    ``lag=1`` reproduces loops that step after each epoch instead (PCL-CLIP's train_pcl):
    epoch e then runs with index e - 1.
    """

    def __init__(self, optimizer, milestones, gamma=0.1, warmup_factor=1.0 / 3,
                 warmup_iters=500, warmup_method='linear', lag=0):
        if list(milestones) != sorted(milestones):
            raise ValueError(f'milestones must be increasing, got {milestones}')
        if warmup_method not in ('constant', 'linear'):
            raise ValueError(f"warmup_method must be 'constant' or 'linear', got {warmup_method!r}")
        self.optimizer = optimizer
        self.milestones = list(milestones)
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        self.lag = lag
        self.base_lrs = [group.setdefault('initial_lr', group['lr'])
                         for group in optimizer.param_groups]
        self.last_epoch = 0
        self._apply(0)  # construction applies index 0, as upstream

    def factor(self, index):
        warmup = 1.0
        if index < self.warmup_iters:
            if self.warmup_method == 'constant':
                warmup = self.warmup_factor
            else:
                alpha = index / self.warmup_iters
                warmup = self.warmup_factor * (1 - alpha) + alpha
        return warmup * self.gamma ** bisect_right(self.milestones, index)

    def _apply(self, index):
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group['lr'] = base_lr * self.factor(index)

    def step(self, epoch):
        self.last_epoch = epoch
        self._apply(max(epoch - self.lag, 0))

    def get_last_lr(self):
        return [group['lr'] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {key: value for key, value in self.__dict__.items() if key != 'optimizer'}

    def load_state_dict(self, state):
        self.__dict__.update(state)
        self._apply(max(self.last_epoch - self.lag, 0))


class WarmupCosineLR:
    """CLIP-ReID stage 1: timm's CosineLRScheduler stepped with the epoch number.

    Epoch t < warmup_t runs at warmup_lr_init + t * (base - warmup_lr_init) / warmup_t;
    from warmup_t on, lr_min + (base - lr_min) * (1 + cos(pi * t / t_initial)) / 2
    (t counts from 0, no warmup prefix); from t_initial on, lr_min.
    """

    def __init__(self, optimizer, t_initial, lr_min, warmup_lr_init, warmup_t):
        self.optimizer = optimizer
        self.timm = CosineLRScheduler(optimizer, t_initial=t_initial, lr_min=lr_min,
                                      cycle_mul=1.0, cycle_decay=0.1, cycle_limit=1,
                                      warmup_t=warmup_t, warmup_lr_init=warmup_lr_init,
                                      t_in_epochs=True)

    def step(self, epoch):
        self.timm.step(epoch)

    def get_last_lr(self):
        return [group['lr'] for group in self.optimizer.param_groups]

    def state_dict(self):
        return self.timm.state_dict()

    def load_state_dict(self, state):
        self.timm.load_state_dict(state)


def make_scheduler(solver_cfg, optimizer, kind='multistep', lag=0):
    """kind 'multistep' (WarmupMultiStepLR from STEPS, GAMMA, WARMUP_FACTOR, WARMUP_ITERS in
    epochs, WARMUP_METHOD; ``lag`` as documented there) or 'cosine' (WarmupCosineLR from
    MAX_EPOCHS, LR_MIN, WARMUP_LR_INIT, WARMUP_EPOCHS)."""
    if kind == 'multistep':
        if solver_cfg.WARMUP_METHOD not in ('constant', 'linear'):
            raise ReIDError(f'config key WARMUP_METHOD={solver_cfg.WARMUP_METHOD!r} is not '
                            "supported; expected 'linear' or 'constant'")
        if list(solver_cfg.STEPS) != sorted(solver_cfg.STEPS):
            raise ReIDError(f'config key STEPS={list(solver_cfg.STEPS)} must be increasing')
        return WarmupMultiStepLR(optimizer, solver_cfg.STEPS, solver_cfg.GAMMA,
                                 solver_cfg.WARMUP_FACTOR, solver_cfg.WARMUP_ITERS,
                                 solver_cfg.WARMUP_METHOD, lag=lag)
    if kind == 'cosine':
        return WarmupCosineLR(optimizer, solver_cfg.MAX_EPOCHS, solver_cfg.LR_MIN,
                              solver_cfg.WARMUP_LR_INIT, solver_cfg.WARMUP_EPOCHS)
    raise ValueError(f"scheduler kind must be 'multistep' or 'cosine', got {kind!r}")
