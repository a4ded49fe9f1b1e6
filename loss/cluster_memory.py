"""PCL-CLIP's prototypical contrastive loss against a memory of identity centroids."""
import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def compute_centroids(features, labels, num_classes):
    """L2-normalised mean of the L2-normalised features of each identity, [num_classes, D].

    As PCL-CLIP (features normalised, averaged per label, normalised again). Labels -1 are
    ignored; an identity with no sample gets a zero row.
    """
    features = F.normalize(features.float(), dim=1)
    keep = labels >= 0
    features, labels = features[keep], labels[keep]
    sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    counts = sums.new_zeros(num_classes).index_add_(0, labels, sums.new_ones(labels.shape[0]))
    return F.normalize(sums / counts.clamp(min=1).unsqueeze(1), dim=1)


class ClusterMemory(nn.Module):
    """Memory of one unit-norm centroid per identity (buffer ``features``, saved in state).

    ``loss = memory(feats, targets)``: cross-entropy of normalize(feats) @ features.T / temp.
    ``memory.update(feats, targets)`` (after backward, no grad): for every identity in the
    batch, m <- momentum * m + (1 - momentum) * x, then m is re-normalised, where x is
    - 'hard': that identity's normalised batch feature least similar to m (the first one
      on ties), as upstream CM_Hard;
    - 'mean': the mean of that identity's normalised batch features.
    The update is vectorised and never synchronises with the host (no bincount/unique).
    """

    def __init__(self, num_features, num_classes, temp=0.05, momentum=0.2, mode='hard'):
        super().__init__()
        if mode not in ('hard', 'mean'):
            raise ValueError(f"ClusterMemory mode must be 'hard' or 'mean', got {mode!r}")
        self.num_features = num_features
        self.num_classes = num_classes
        self.temp = temp
        self.momentum = momentum
        self.mode = mode
        self.register_buffer('features', torch.zeros(num_classes, num_features))

    @torch.no_grad()
    def build(self, centroids):
        if tuple(centroids.shape) != tuple(self.features.shape):
            raise ValueError(f'centroids of shape {tuple(centroids.shape)} do not fit a memory '
                             f'of shape {tuple(self.features.shape)}')
        self.features.copy_(F.normalize(centroids.float(), dim=1))

    def forward(self, feats, targets):
        logits = F.normalize(feats.float(), dim=1) @ self.features.t() / self.temp
        return F.cross_entropy(logits, targets)

    @torch.no_grad()
    def update(self, feats, targets):
        x = F.normalize(feats.float(), dim=1)
        num, batch = self.num_classes, x.shape[0]
        if self.mode == 'hard':
            sim = (x * self.features[targets]).sum(1)
            min_sim = sim.new_full((num,), float('inf')).scatter_reduce(
                0, targets, sim, reduce='amin')
            # first sample reaching its identity's minimum (index batch = "no sample")
            index = torch.arange(batch, device=x.device)
            index = torch.where(sim == min_sim[targets], index, batch)
            first = index.new_full((num,), batch).scatter_reduce(0, targets, index, reduce='amin')
            present = first < batch
            target_x = x[first.clamp(max=batch - 1)]
        else:
            sums = x.new_zeros(num, x.shape[1]).index_add_(0, targets, x)
            counts = x.new_zeros(num).index_add_(0, targets, x.new_ones(batch))
            present = counts > 0
            target_x = sums / counts.clamp(min=1).unsqueeze(1)
        moved = F.normalize(self.momentum * self.features + (1 - self.momentum) * target_x, dim=1)
        self.features.copy_(torch.where(present.unsqueeze(1), moved, self.features))
