"""Batch-hard triplet loss (Hermans et al. 2017) as in TransReID / CLIP-ReID."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .precision import float32


def euclidean_dist(x, y):
    """Pairwise distances sqrt(clamp(|x|^2 + |y|^2 - 2 x.y, 1e-12)), shape [m, n]."""
    xx = x.pow(2).sum(1, keepdim=True)
    yy = y.pow(2).sum(1, keepdim=True).t()
    return (xx + yy - 2 * x @ y.t()).clamp(min=1e-12).sqrt()


def hard_example_mining(dist_mat, labels):
    """Per anchor: the farthest positive (the anchor itself counts, as upstream) and the
    nearest negative. Works for any batch, not only equal-sized PK batches."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    dist_ap = dist_mat.masked_fill(~same, float('-inf')).max(dim=1).values
    dist_an = dist_mat.masked_fill(same, float('inf')).min(dim=1).values
    return dist_ap, dist_an


class TripletLoss(nn.Module):
    """margin=None gives the soft-margin variant log(1 + exp(d_ap - d_an)) (MODEL.NO_MARGIN).

    forward(feats, labels) -> (loss, dist_ap, dist_an); features are not normalised
    (upstream normalize_feature=False).
    """

    def __init__(self, margin=None):
        super().__init__()
        self.margin = margin

    @float32
    def forward(self, feats, labels):
        dist_ap, dist_an = hard_example_mining(euclidean_dist(feats, feats), labels)
        y = torch.ones_like(dist_an)
        if self.margin is None:
            loss = F.soft_margin_loss(dist_an - dist_ap, y)
        else:
            loss = F.margin_ranking_loss(dist_an, dist_ap, y, margin=self.margin)
        return loss, dist_ap, dist_an
