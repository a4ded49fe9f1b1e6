"""Loss arithmetic in float32, also under mixed-precision autocast."""
import functools

import torch


def _up(value):
    return value.float() if torch.is_tensor(value) and value.is_floating_point() else value


def float32(forward):
    """Run a loss (function or forward method) with autocast off and float tensors in float32.

    Under bf16/fp16 autocast a matmul inside a loss would run in the low precision: triplet
    distance matrices, memory logits scaled by 1/0.05 and contrastive logits would lose the
    digits that decide the hardest sample or the softmax. The network itself still runs in
    mixed precision; only the loss arithmetic is lifted.
    """
    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in (*args, *kwargs.values()) if torch.is_tensor(a)),
                      'cpu')
        with torch.autocast(device, enabled=False):
            return forward(*map(_up, args), **{k: _up(v) for k, v in kwargs.items()})
    return wrapper
