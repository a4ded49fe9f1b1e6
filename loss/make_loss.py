"""The supervised re-ID objective of stage 2 / baseline / PCL's ID term, built from cfg."""
import torch.nn as nn

from utils.errors import ReIDError

from .center import CenterLoss
from .cross_entropy import CrossEntropy, CrossEntropyLabelSmooth
from .triplet import TripletLoss


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


class ReIDLoss(nn.Module):
    """``total, parts = loss_fn(outputs, target, i2t_logits=None)``.

    total = id_weight * sum(ID loss over outputs['logits'])
          + triplet_weight * sum(triplet loss over outputs['feats'])   (when triplet is set)
          + i2t_weight * ID loss(i2t_logits)                           (when given)
          + center_weight * center(outputs['feats'][-1])               (when center is set)
    ``parts`` maps 'id', 'triplet', 'i2t', 'center' to the detached weighted terms that were
    computed (they add up to ``total``).
    """

    def __init__(self, id_loss, triplet=None, center=None, id_weight=1.0, triplet_weight=1.0,
                 i2t_weight=1.0, center_weight=0.0):
        super().__init__()
        self.id_loss = id_loss
        self.triplet = triplet
        self.center = center
        self.id_weight = id_weight
        self.triplet_weight = triplet_weight
        self.i2t_weight = i2t_weight
        self.center_weight = center_weight

    def forward(self, outputs, target, i2t_logits=None):
        terms = {'id': self.id_weight * sum(self.id_loss(s, target)
                                            for s in _as_list(outputs['logits']))}
        feats = _as_list(outputs.get('feats', []))
        if self.triplet is not None and feats:
            terms['triplet'] = self.triplet_weight * sum(self.triplet(f, target)[0] for f in feats)
        if i2t_logits is not None:
            terms['i2t'] = self.i2t_weight * self.id_loss(i2t_logits, target)
        if self.center is not None:
            terms['center'] = self.center_weight * self.center(feats[-1], target)
        total = sum(terms.values())
        return total, {name: value.detach() for name, value in terms.items()}

    def unweight_center_grads(self):
        """Divide the center gradients by the center-loss weight before the center optimizer
        steps, as upstream does, so the centers move at CENTER_LR whatever the weight."""
        if self.center is not None and self.center_weight:
            for param in self.center.parameters():
                if param.grad is not None:
                    param.grad.mul_(1.0 / self.center_weight)


def _check(name, value, allowed):
    if value not in allowed:
        raise ReIDError(f'config key {name}={value!r} is not supported; '
                        f'expected one of {", ".join(map(repr, allowed))}')


def make_loss(cfg, num_classes, solver_cfg=None, feat_dim=None):
    """Build the ReIDLoss the config describes.

    solver_cfg: the solver node whose CENTER_LOSS_WEIGHT applies; by default
    cfg.SOLVER.STAGE2 for MODEL.METHOD 'clipreid', cfg.SOLVER otherwise.
    feat_dim: dimension of outputs['feats'][-1], required when MODEL.IF_WITH_CENTER is 'yes'
    (the CenterLoss is then ``loss_fn.center``; give it to make_optimizer).
    PCL-CLIP has no triplet term: for MODEL.METHOD 'pcl' the loss is the ID term (plus
    center when asked); the trainer adds the cluster-memory loss itself.
    """
    model = cfg.MODEL
    _check('MODEL.ID_LOSS_TYPE', model.ID_LOSS_TYPE, ('softmax',))
    _check('MODEL.METRIC_LOSS_TYPE', model.METRIC_LOSS_TYPE, ('triplet',))
    _check('MODEL.IF_LABELSMOOTH', model.IF_LABELSMOOTH, ('on', 'off'))
    _check('MODEL.IF_WITH_CENTER', model.IF_WITH_CENTER, ('yes', 'no'))
    if solver_cfg is None:
        solver_cfg = cfg.SOLVER.STAGE2 if model.METHOD == 'clipreid' else cfg.SOLVER

    id_loss = (CrossEntropyLabelSmooth(num_classes) if model.IF_LABELSMOOTH == 'on'
               else CrossEntropy())
    triplet = None
    if model.METHOD != 'pcl':
        triplet = TripletLoss(None if model.NO_MARGIN else cfg.SOLVER.MARGIN)
    center = None
    if model.IF_WITH_CENTER == 'yes':
        if feat_dim is None:
            raise ValueError("make_loss needs feat_dim when MODEL.IF_WITH_CENTER is 'yes'")
        center = CenterLoss(num_classes, feat_dim)
    return ReIDLoss(id_loss, triplet, center,
                    id_weight=model.ID_LOSS_WEIGHT,
                    triplet_weight=model.TRIPLET_LOSS_WEIGHT,
                    i2t_weight=model.I2T_LOSS_WEIGHT,
                    center_weight=solver_cfg.CENTER_LOSS_WEIGHT if center is not None else 0.0)
