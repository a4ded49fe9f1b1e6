"""Center loss (Wen et al., ECCV 2016) as in the strong re-ID baseline / TransReID."""
import torch
import torch.nn as nn

from .precision import float32


class CenterLoss(nn.Module):
    """Mean over the batch of the squared distance of each feature to its class center.

    Each squared distance is clamped to [1e-12, 1e12] as upstream. The centers are
    parameters trained by their own SGD optimizer (SOLVER.*.CENTER_LR).
    """

    def __init__(self, num_classes, feat_dim):
        super().__init__()
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    @float32
    def forward(self, feats, labels):
        diff = feats - self.centers[labels]
        return diff.pow(2).sum(1).clamp(min=1e-12, max=1e12).mean()
