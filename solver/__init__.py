"""Optimizers and learning-rate schedules."""
from .lr_scheduler import WarmupCosineLR, WarmupMultiStepLR, make_scheduler
from .make_optimizer import make_optimizer

__all__ = ['make_optimizer', 'make_scheduler', 'WarmupMultiStepLR', 'WarmupCosineLR']
