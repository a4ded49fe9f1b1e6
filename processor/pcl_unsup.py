"""Unsupervised PCL-CLIP: PCL's prototypical contrastive fine-tuning on pseudo-identities
found by clustering the unlabelled training set (ClusterContrast's loop; CAP/O2CAP's
camera-aware proxies with CLUSTER.LOSS 'camera_proxy')."""
import functools
import time

import numpy as np
import torch
import torch.nn.functional as F

from datasets.make_dataloader import make_train_loader, train_batch
from datasets.samplers import PKSampler
from loss import CameraProxyMemory
from utils import distributed as du
from utils.clustering import camera_proxies, cluster_features, clustering_summary
from utils.errors import ReIDError

from .batches import EpochBatches
from .pcl import PCLTrainer

LOSSES = ('cluster', 'camera_proxy')


class UnsupervisedPCLTrainer(PCLTrainer):
    """Every CLUSTER.PERIOD epochs, rank 0 clusters the training set's features (test
    transform): k-reciprocal Jaccard distance, DBSCAN, outliers dropped; the labels are
    broadcast. Every epoch the memory is rebuilt from fresh features over the pseudo-identities
    (or their camera proxies) and PK batches are drawn over them; the loss is PCL's memory loss
    without the ID term. Train labels are never read for training: they only feed the purity
    figures of the log. Camera ids are used (they need no annotation)."""
    stage = 'pcl_unsup'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_cluster_config(self.cfg.CLUSTER)
        self.proxies = self.cfg.CLUSTER.LOSS == 'camera_proxy'
        self.camids = np.array([record[2] for record in self.data.dataset.train], dtype=np.int64)
        self.labels = None  # cluster of every training image, -1 for outliers
        self.loader = None

    # ----- per epoch ---------------------------------------------------------------------
    def prepare_epoch(self, epoch):
        feats, true_pids = self.train_features()
        if self.labels is None or (epoch - 1) % self.cfg.CLUSTER.PERIOD == 0:
            self.labels = self.cluster(feats, true_pids, epoch)
            self.loader = None
        targets, proxy_cluster, proxy_camera = self.targets()
        self.check_targets(targets, epoch)
        num = int(targets.max()) + 1
        labels = torch.as_tensor(targets, device=self.device)
        proxy_memory = None
        if self.proxies:
            c = self.cfg.CLUSTER
            proxy_memory = functools.partial(
                CameraProxyMemory, proxy_cluster=proxy_cluster, proxy_camera=proxy_camera,
                **self.memory_args, negatives=c.PROXY_NEGATIVES, positives=c.PROXY_POSITIVES,
                balance=c.PROXY_BALANCE)
        self.memory = self.make_memory(feats, labels, num, proxy_memory)
        if self.loader is None:
            self.loader = self.pseudo_loader(targets)

    def cluster(self, feats, true_pids, epoch):
        """Pseudo-labels of the training images (rank 0 clusters, every rank gets them)."""
        c = self.cfg.CLUSTER
        labels = torch.empty(feats.shape[0], dtype=torch.int64, device=self.device)
        with du.fail_together():
            if du.is_main_process():
                start = time.perf_counter()
                found = cluster_features(feats, c.K1, c.K2, c.EPS, c.MIN_SAMPLES)
                labels.copy_(torch.from_numpy(found))
                self.log_clustering(epoch, found, true_pids.cpu().numpy(),
                                    time.perf_counter() - start)
        return du.broadcast_from_main(labels).cpu().numpy()

    def targets(self):
        """(per-image target of the sampler and memory, -1 = dropped; then the cluster and the
        camera of each proxy, or None, None): clusters, or camera proxies."""
        if not self.proxies:
            return self.labels, None, None
        return camera_proxies(self.labels, self.camids)

    def check_targets(self, targets, epoch):
        """Stop with the keys to change when clustering leaves too little for PK batches."""
        c, k = self.cfg.CLUSTER, self.cfg.DATALOADER.NUM_INSTANCE
        _, batch = train_batch(self.cfg)
        found = int(targets.max()) + 1
        needed = max(1, batch // max(k, 1))
        if found >= needed:
            return
        outliers = int((self.labels < 0).sum())
        fix = f'raise CLUSTER.EPS (now {c.EPS}) or lower CLUSTER.MIN_SAMPLES (now {c.MIN_SAMPLES})'
        if found == 0:
            raise ReIDError(f'{self.stage}: clustering before epoch {epoch} made every one of the '
                            f'{len(targets)} training images an outlier (no cluster): {fix}')
        if 2 * outliers < len(targets):  # few clusters, most images in them: they are merged
            fix = (f'lower CLUSTER.EPS (now {c.EPS}) to split them or raise CLUSTER.MIN_SAMPLES '
                   f'(now {c.MIN_SAMPLES})')
        unit = 'camera proxies' if self.proxies else 'clusters'
        raise ReIDError(f'{self.stage}: clustering before epoch {epoch} found {found} {unit} '
                        f'({outliers} of {len(targets)} images are outliers); a PK batch of '
                        f'SOLVER.IMS_PER_BATCH {batch} with DATALOADER.NUM_INSTANCE {k} needs '
                        f'{needed}: {fix}, or use smaller batches')

    def pseudo_loader(self, targets):
        """PK batches over the pseudo-identities; the records' own pids are not read."""
        records = [(record[0], int(target), record[2], record[3])
                   for record, target in zip(self.data.dataset.train, targets) if target >= 0]
        key, batch = train_batch(self.cfg)
        sampler = PKSampler(records, batch, self.cfg.DATALOADER.NUM_INSTANCE, self.cfg.SOLVER.SEED,
                            self.runtime.rank, self.runtime.world_size, key)
        return make_train_loader(self.cfg, records, sampler)

    def log_clustering(self, epoch, labels, true_pids, seconds):
        s = clustering_summary(labels, true_pids)
        sizes = ', '.join(f'{size}: {n}' for size, n in s['sizes'].items()) or 'none'
        line = (f'clustering before epoch {epoch} ({seconds:.1f}s): {s["clusters"]} clusters, '
                f'{s["outliers"]} outliers of {s["images"]} images; clusters by size {sizes}')
        if self.proxies:
            line += f'; {len(camera_proxies(labels, self.camids)[1])} camera proxies'
        if 'nmi' in s:
            line += (f'; against the train labels (information only, not used): NMI '
                     f'{s["nmi"]:.3f}, ARI {s["ari"]:.3f} over the clustered images')
        self.logger.info(line)
        curves = {'cluster/clusters': s['clusters'], 'cluster/outliers': s['outliers']}
        curves.update((f'cluster/{k}', s[k]) for k in ('nmi', 'ari') if k in s)
        self.curves.add(epoch, self.iteration, curves)  # rank 0 only: no collective here

    # ----- per step ----------------------------------------------------------------------
    def batches(self, epoch):
        return EpochBatches(self.loader, epoch, limit=self.cfg.SOLVER.ITERS)

    def train_step(self, batch):
        images, target, camids, viewids = batch
        cam, view = self.sie_labels(camids, viewids)
        feats = self.model(images, cam_label=cam, view_label=view)['feats'][0].float()
        self._batch_feats = F.normalize(feats.detach(), dim=1)
        if self.proxies:
            offline, online = self.memory.losses(feats, target)
            loss, parts = offline + online, {'offline': offline.detach(), 'online': online.detach()}
        else:
            loss = self.memory(feats, target)
            parts = {'pcl': loss.detach()}
        return self.cfg.MODEL.PCL_LOSS_WEIGHT * loss, parts

    # ----- resume --------------------------------------------------------------------------
    def extra_state(self):
        labels = None if self.labels is None else torch.from_numpy(self.labels)
        return {**super().extra_state(), 'pseudo_labels': labels}

    def load_state(self, state):
        """As the engine's, plus the pseudo-labels of the last clustering: an epoch that does
        not re-cluster (CLUSTER.PERIOD > 1) trains on them."""
        start = super().load_state(state)
        labels = state.get('extra', {}).get('pseudo_labels')
        if labels is not None:
            if len(labels) != len(self.camids):
                raise ReIDError(f'the training state holds pseudo-labels of {len(labels)} images; '
                                f'this training set has {len(self.camids)}')
            self.labels = labels.numpy()
        return start


def check_cluster_config(c):
    """Refuse CLUSTER values that cannot work, before any feature is extracted."""
    if c.LOSS not in LOSSES:
        raise ReIDError(f"CLUSTER.LOSS must be 'cluster' or 'camera_proxy', not {c.LOSS!r}")
    if not 0 < c.EPS < 1:
        raise ReIDError(f'CLUSTER.EPS must be between 0 and 1 (Jaccard distances lie in [0, 1], '
                        f'1 meaning no shared neighbour), not {c.EPS}')
    for key in ('MIN_SAMPLES', 'K1', 'K2', 'PERIOD', 'PROXY_POSITIVES'):
        if getattr(c, key) < 1:
            raise ReIDError(f'CLUSTER.{key} must be at least 1, not {getattr(c, key)}')
    if c.PROXY_NEGATIVES < 0 or not 0 <= c.PROXY_BALANCE <= 1:
        raise ReIDError('CLUSTER.PROXY_NEGATIVES must be >= 0 and CLUSTER.PROXY_BALANCE in '
                        f'[0, 1], not {c.PROXY_NEGATIVES} and {c.PROXY_BALANCE}')
