"""PCL-CLIP: prototypical contrastive fine-tuning against a per-identity centroid memory."""
import torch
import torch.nn.functional as F

from loss import ClusterMemory, compute_centroids, make_loss
from loss.cluster_memory import MEMORY_UPDATES
from utils import distributed as du
from utils.errors import ReIDError
from utils.finite import check_finite

from .batches import EpochBatches
from .engine import Trainer
from .inference import extract_features


class PCLTrainer(Trainer):
    stage = 'pcl'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.cfg
        if cfg.MODEL.IF_WITH_CENTER == 'yes':  # no center optimizer is built for PCL
            raise ReIDError("MODEL.IF_WITH_CENTER 'yes' is not supported by PCL-CLIP training; "
                            "set it to 'no'")
        if cfg.MODEL.MEMORY_UPDATE not in MEMORY_UPDATES:
            raise ReIDError(f'MODEL.MEMORY_UPDATE must be one of {", ".join(MEMORY_UPDATES)}, '
                            f'not {cfg.MODEL.MEMORY_UPDATE!r}')
        # The ID term as make_loss builds it: label smoothing follows MODEL.IF_LABELSMOOTH.
        self.id_loss = make_loss(cfg, self.data.num_classes).id_loss
        self.memory = None
        self.memory_args = dict(temp=cfg.MODEL.PCL_TEMPERATURE, momentum=cfg.MODEL.MEMORY_MOMENTUM,
                                mode=cfg.MODEL.MEMORY_UPDATE)
        self._batch_feats = None

    def step_scheduler(self, epoch):
        # PCL-CLIP steps its scheduler at the end of each epoch: epoch e trains with lr(e-1).
        self.scheduler.step(epoch - 1)

    def prepare_epoch(self, epoch):
        """Centroids of the whole training set become the memory."""
        feats, pids = self.train_features()
        self.memory = self.make_memory(feats, pids, self.data.num_classes)

    def train_features(self):
        """(features, pids) of the training set in order: test transform, eval mode, the
        BN-neck features the loss sees, without SIE labels (as upstream). Features that are
        not finite stop the run on every rank (each holds the whole set), naming the images."""
        net = self.net
        net.eval()
        feats, pids = extract_features(self.cfg, lambda x, c, v: net.memory_features(x),
                                       self.data.train_eval_loader, self.runtime, desc='memory')
        net.train()
        paths = [record[0] for record in self.data.dataset.train]  # the loader's order
        check_finite(('train', feats, paths if len(paths) == len(feats) else None))
        return feats, pids

    def make_memory(self, feats, labels, num_classes, memory_type=None):
        """A memory holding the centroid of each label (labels -1 are left out):
        memory_type(feature dim), a ClusterMemory of num_classes rows by default."""
        centroids = compute_centroids(F.normalize(feats, dim=1), labels, num_classes)
        # index_add_ may sum in any order on a GPU: every rank takes rank 0's sums
        centroids = du.broadcast_from_main(centroids)
        if memory_type is None:
            memory = ClusterMemory(centroids.shape[1], num_classes, **self.memory_args)
        else:
            memory = memory_type(centroids.shape[1])
        memory.to(self.device).build(centroids)
        return memory

    def batches(self, epoch):
        return EpochBatches(self.data.train_loader, epoch, limit=self.cfg.SOLVER.ITERS)

    def train_step(self, batch):
        images, target, camids, viewids = batch
        cam, view = self.sie_labels(camids, viewids)
        out = self.model(images, cam_label=cam, view_label=view)
        feats, logits = out['feats'][0], out['logits'][0]
        self._batch_feats = F.normalize(feats.detach().float(), dim=1)
        loss_pcl = self.memory(feats.float(), target)
        loss_id = self.id_loss(logits.float(), target)
        loss = self.cfg.MODEL.PCL_LOSS_WEIGHT * loss_pcl + self.cfg.MODEL.ID_LOSS_WEIGHT * loss_id
        acc = (logits.argmax(1) == target).float().mean()
        return loss, {'pcl': loss_pcl.detach(), 'id': loss_id.detach(), 'acc': acc}

    def after_step(self, batch):
        # Every rank applies the same update from the whole global batch (the PK sampler
        # gives every rank the same share size): features and labels in one collective,
        # the labels as an exact float32 column.
        packed = torch.cat([self._batch_feats, batch[1].unsqueeze(1).float()], dim=1)
        packed = du.all_gather_equal(packed)
        self.memory.update(packed[:, :-1], packed[:, -1].long())

    def extra_state(self):
        return {'memory': self.memory.state_dict() if self.memory is not None else None}

