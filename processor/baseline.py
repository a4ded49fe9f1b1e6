"""Plain fine-tuning of the CLIP image encoder with identity and triplet losses."""
from .batches import EpochBatches
from .engine import Trainer


class BaselineTrainer(Trainer):
    stage = 'baseline'

    def __init__(self, *args, loss_fn, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn

    def batches(self, epoch):
        return EpochBatches(self.data.train_loader, epoch)

    def train_step(self, batch):
        images, target, camids, viewids = batch
        cam, view = self.sie_labels(camids, viewids)
        out = self.model(images, label=target, cam_label=cam, view_label=view)
        loss, parts = self.loss_fn(out, target)
        acc = (out['logits'][0].argmax(1) == target).float().mean()
        return loss, {**parts, 'acc': acc}
