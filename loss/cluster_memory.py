"""PCL-CLIP's prototypical contrastive loss against a memory of identity centroids."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .precision import float32


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


MEMORY_UPDATES = ('hard', 'sequential')


class ClusterMemory(nn.Module):
    """Memory of one unit-norm centroid per identity (buffer ``features``, saved in state).

    ``loss = memory(feats, targets)``: cross-entropy of normalize(feats) @ features.T / temp.
    ``memory.update(feats, targets)`` (after backward, no grad) moves centroids by
    m <- normalize(momentum * m + (1 - momentum) * x), where x is
    - 'hard': for every identity in the batch, its normalised batch feature least similar to
      m (the first one on ties), once per identity, as upstream CM_Hard. Vectorised, no host
      synchronisation;
    - 'sequential': every normalised batch feature in batch order, one step per sample, as
      upstream's non-hard CM. Identities advance together, one occurrence at a time.
    """

    def __init__(self, num_features, num_classes, temp=0.05, momentum=0.2, mode='hard'):
        super().__init__()
        if mode not in MEMORY_UPDATES:
            raise ValueError(f'ClusterMemory mode must be one of {MEMORY_UPDATES}, got {mode!r}')
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

    @float32
    def forward(self, feats, targets):
        logits = F.normalize(feats, dim=1) @ self.features.t() / self.temp
        return F.cross_entropy(logits, targets)

    def _move(self, index, x):
        m = self.momentum
        self.features[index] = F.normalize(m * self.features[index] + (1 - m) * x, dim=1)

    @torch.no_grad()
    def update(self, feats, targets):
        x = F.normalize(feats.float(), dim=1)
        if self.mode == 'sequential':
            occurrence = _occurrence(targets, self.num_classes)
            for k in range(int(occurrence.max()) + 1 if len(targets) else 0):
                pick = occurrence == k  # at most one sample per identity
                self._move(targets[pick], x[pick])
            return
        num, batch = self.num_classes, x.shape[0]
        sim = (x * self.features[targets]).sum(1)
        min_sim = sim.new_full((num,), float('inf')).scatter_reduce(
            0, targets, sim, reduce='amin')
        # first sample reaching its identity's minimum (index batch = "no sample")
        index = torch.arange(batch, device=x.device)
        index = torch.where(sim == min_sim[targets], index, batch)
        first = index.new_full((num,), batch).scatter_reduce(0, targets, index, reduce='amin')
        present = first < batch
        m = self.momentum
        moved = F.normalize(m * self.features + (1 - m) * x[first.clamp(max=batch - 1)], dim=1)
        self.features.copy_(torch.where(present.unsqueeze(1), moved, self.features))


def _occurrence(targets, num_classes):
    """For each sample, how many earlier samples of the batch share its identity."""
    order = torch.sort(targets, stable=True).indices
    position = torch.arange(len(targets), device=targets.device)
    first = position.new_full((num_classes,), len(targets)).scatter_reduce(
        0, targets[order], position, reduce='amin')
    occurrence = torch.empty_like(position)
    occurrence[order] = position - first[targets[order]]
    return occurrence
