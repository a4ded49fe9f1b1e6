"""Camera-aware proxy memory (CAP / O2CAP, Wang et al. AAAI 2021 / TIP 2022) for unsupervised
training: each cluster is split by camera, and each (cluster, camera) proxy has a centroid."""
import torch
import torch.nn.functional as F

from .cluster_memory import ClusterMemory
from .precision import float32


class CameraProxyMemory(ClusterMemory):
    """``features`` holds one unit-norm centroid per proxy; targets are proxy ids.

    ``offline, online = memory.losses(feats, targets)`` (``memory(feats, targets)`` is their
    sum), with s = normalize(feats) @ features.T and logits s / temp. Each loss is, per sample,
    the mean over its positive proxies of -log softmax, the softmax taken over the positives
    and the `negatives` hardest other proxies; averaged over the batch.
    - offline (O2CAP's cross-camera association): the positives are every proxy of the
      sample's cluster; hardness is s.
    - online (O2CAP's camera-aware nearest neighbours): with
      h = balance * s + (1 - balance) * (own proxy's centroid @ features.T), the proxy of
      highest h in each camera is a candidate and the `positives` best candidates are the
      positives; hardness is h.
    ``update`` is ClusterMemory's momentum update over proxies ('hard' or 'sequential').
    """

    def __init__(self, num_features, proxy_cluster, proxy_camera, temp=0.07, momentum=0.2,
                 mode='hard', negatives=50, positives=3, balance=0.15):
        proxy_cluster = torch.as_tensor(proxy_cluster, dtype=torch.int64)
        proxy_camera = torch.as_tensor(proxy_camera, dtype=torch.int64)
        super().__init__(num_features, len(proxy_cluster), temp, momentum, mode)
        self.negatives, self.positives, self.balance = negatives, positives, balance
        self.register_buffer('proxy_cluster', proxy_cluster)
        cameras = torch.unique(proxy_camera)
        self.register_buffer('camera_mask', cameras[:, None] == proxy_camera[None, :])  # [C, P]

    def forward(self, feats, targets):
        offline, online = self.losses(feats, targets)
        return offline + online

    @float32
    def losses(self, feats, targets):
        scores = F.normalize(feats.float(), dim=1) @ self.features.t()
        logits = scores / self.temp
        own_cluster = self.proxy_cluster[targets]
        offline = self._nll(logits, self.proxy_cluster[None, :] == own_cluster[:, None],
                            scores.detach())
        hardness = (self.balance * scores.detach()
                    + (1 - self.balance) * self.features[targets] @ self.features.t())
        return offline, self._nll(logits, self._camera_neighbours(hardness), hardness)

    def _camera_neighbours(self, hardness):
        """[B, P] bool: the `positives` best of each row's per-camera best proxies."""
        per_camera = hardness[:, None, :].masked_fill(~self.camera_mask[None], float('-inf'))
        best = per_camera.argmax(2)  # [B, C]
        top = hardness.gather(1, best).topk(min(self.positives, best.shape[1]), dim=1).indices
        return torch.zeros_like(hardness, dtype=torch.bool).scatter_(1, best.gather(1, top), True)

    def _nll(self, logits, positive, hardness):
        negatives = hardness.masked_fill(positive, float('-inf'))
        k = min(self.negatives, logits.shape[1])
        # rows with fewer than k negatives also pick positives here: they are kept anyway
        hard = torch.zeros_like(positive).scatter_(1, negatives.topk(k, dim=1).indices, True)
        log_p = logits.masked_fill(~(positive | hard), float('-inf')).log_softmax(1)
        per_sample = -log_p.masked_fill(~positive, 0).sum(1) / positive.sum(1)
        return per_sample.mean()
