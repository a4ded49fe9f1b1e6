"""CLIP-ReID's two stages.

Stage 1 learns the identity prompt tokens against image features cached once with the
frozen image encoder. Stage 2 caches one text feature per identity and fine-tunes the image
encoder with ID, triplet and image-to-text losses.
"""
import torch

from loss import SupConLoss, image_to_text_logits
from utils import distributed as du
from utils.finite import check_finite

from .baseline import BaselineTrainer
from .engine import Trainer
from .inference import extract_features


class PromptTrainer(Trainer):
    """Stage 1. Every rank computes the loss of the whole global batch (the contrast is over
    the batch, so splitting it would change the objective); gradients are then identical on
    all ranks and need no DDP wrapper."""
    stage = 'stage1'
    weights_pattern = '{name}_stage1_{epoch}.pth'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.supcon = SupConLoss()
        self.image_feats = self.labels = None

    def prepare_epoch(self, epoch):
        if self.image_feats is None:
            net = self.net
            net.eval()
            # As upstream, the cache ignores SIE: plain image features of the frozen encoder.
            self.image_feats, self.labels = extract_features(
                self.cfg, lambda x, cam, view: net.encode_image(x), self.data.train_eval_loader,
                self.runtime, desc='image features')
            net.train()
            paths = [record[0] for record in self.data.dataset.train]  # the loader's order
            check_finite(('train', self.image_feats,
                          paths if len(paths) == len(self.image_feats) else None))

    def batches(self, epoch):
        order = torch.randperm(len(self.labels), device=self.labels.device)
        if du.is_dist():  # the seed differs per rank; every rank must see the same batches
            torch.distributed.broadcast(order, 0)
        return list(order.split(self.solver.IMS_PER_BATCH))

    def to_device(self, batch):
        return [batch]

    def samples_in(self, batch):
        return batch[0].shape[0]  # every rank trains on the whole global batch

    def train_step(self, batch):
        (index,) = batch
        target, image_feats = self.labels[index], self.image_feats[index]
        text_feats = self.net.encode_text(target)
        loss_i2t = self.supcon(image_feats, text_feats, target, target)
        loss_t2i = self.supcon(text_feats, image_feats, target, target)
        return loss_i2t + loss_t2i, {'i2t': loss_i2t.detach(), 't2i': loss_t2i.detach()}

    def after_step(self, batch):
        if du.is_dist():  # keep ranks bit-identical despite non-deterministic kernels
            torch.distributed.broadcast(self.net.prompt_learner.cls_ctx.data, 0)


class ImageTrainer(BaselineTrainer):
    """Stage 2: the baseline's losses plus cross-entropy of the image projection against the
    frozen identity text features."""
    stage = 'stage2'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.text_feats = None

    def prepare_epoch(self, epoch):
        if self.text_feats is None:  # one text feature per identity, from the learned prompts
            with self.autocast():
                feats = self.net.all_text_features(self.cfg.SOLVER.STAGE1.IMS_PER_BATCH).float()
            if du.is_dist():
                torch.distributed.broadcast(feats, 0)
            self.text_feats = feats

    def train_step(self, batch):
        images, target, camids, viewids = batch
        cam, view = self.sie_labels(camids, viewids)
        out = self.model(images, label=target, cam_label=cam, view_label=view)
        i2t_logits = image_to_text_logits(out['image_proj'], self.text_feats)
        loss, parts = self.loss_fn(out, target, i2t_logits=i2t_logits)
        acc = (i2t_logits.argmax(1) == target).float().mean()
        return loss, {**parts, 'acc': acc}

