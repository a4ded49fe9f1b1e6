"""Optimizers with upstream CLIP-ReID / TransReID's per-parameter settings."""
import inspect

import torch

from utils.errors import ReIDError

from .layer_decay import layer_decay_scales, log_layer_decay


def make_optimizer(solver_cfg, model, center_criterion=None):
    """Returns (optimizer, center_optimizer or None).

    solver_cfg is cfg.SOLVER, cfg.SOLVER.STAGE1 or cfg.SOLVER.STAGE2. Only parameters with
    requires_grad are optimised (freezing is the caller's job). Biases get
    BASE_LR * BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS; with LARGE_FC_LR, 'classifier'
    parameters get 2 * BASE_LR (of this node; upstream stage 2 read the flat SOLVER.BASE_LR).
    Upstream makes one group per tensor; the same settings are merged into one group per
    (lr, weight decay) here, the same update, done by PyTorch's multi-tensor (foreach) or
    fused kernels instead of ~200 small ones. OPTIMIZER_NAME is any torch.optim class
    ('SGD' uses MOMENTUM). LAYER_DECAY (multistep nodes) below 1 scales the LR of a ViT image
    encoder's parameters by depth (solver.layer_decay), on top of the rules above. The
    center optimizer is SGD at CENTER_LR over center_criterion's parameters.
    """
    decay = getattr(solver_cfg, 'LAYER_DECAY', 1.0)  # stage 1 (prompts only) has none
    scales = layer_decay_scales(model, decay)
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, weight_decay = solver_cfg.BASE_LR, solver_cfg.WEIGHT_DECAY
        if 'bias' in name:
            lr = solver_cfg.BASE_LR * solver_cfg.BIAS_LR_FACTOR
            weight_decay = solver_cfg.WEIGHT_DECAY_BIAS
        if solver_cfg.LARGE_FC_LR and ('classifier' in name or 'arcface' in name):
            lr = solver_cfg.BASE_LR * 2
        lr *= scales.get(id(param), 1.0)
        groups.setdefault((lr, weight_decay), []).append(param)
    if scales:
        log_layer_decay(model, decay, solver_cfg.BASE_LR)
    if not groups:
        raise ValueError('make_optimizer: the model has no parameter with requires_grad')
    groups = [{'params': params, 'lr': lr, 'weight_decay': wd}
              for (lr, wd), params in groups.items()]

    name = solver_cfg.OPTIMIZER_NAME
    optim_class = getattr(torch.optim, name, None)
    if not (isinstance(optim_class, type) and issubclass(optim_class, torch.optim.Optimizer)):
        raise ReIDError(f'config key OPTIMIZER_NAME={name!r} is not a torch.optim optimizer '
                        "(e.g. 'Adam', 'AdamW', 'SGD')")
    kwargs = {'momentum': solver_cfg.MOMENTUM} if name == 'SGD' else {}
    on_cuda = all(p.is_cuda for group in groups for p in group['params'])
    if on_cuda and 'fused' in inspect.signature(optim_class).parameters:
        kwargs['fused'] = True
    optimizer = optim_class(groups, lr=solver_cfg.BASE_LR, **kwargs)

    center_optimizer = None
    if center_criterion is not None:
        center_optimizer = torch.optim.SGD(center_criterion.parameters(), lr=solver_cfg.CENTER_LR)
    return optimizer, center_optimizer
