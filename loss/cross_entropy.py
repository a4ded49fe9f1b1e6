"""Identity (classification) loss: cross-entropy with optional label smoothing."""
import torch.nn as nn
import torch.nn.functional as F

from .precision import float32


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against smoothed targets (1 - eps) * onehot + eps / K, mean over the batch.

    Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016; as in TransReID /
    CLIP-ReID / PCL-CLIP (epsilon 0.1).
    """

    def __init__(self, num_classes, epsilon=0.1):
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon

    @float32
    def forward(self, logits, targets):
        log_probs = F.log_softmax(logits, dim=1)
        onehot = log_probs.new_zeros(log_probs.shape).scatter_(1, targets.unsqueeze(1), 1.0)
        smoothed = (1 - self.epsilon) * onehot + self.epsilon / self.num_classes
        return (-smoothed * log_probs).sum(1).mean()


class CrossEntropy(nn.Module):
    """Plain cross-entropy (MODEL.IF_LABELSMOOTH 'off'), computed in float32."""

    @float32
    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets)
