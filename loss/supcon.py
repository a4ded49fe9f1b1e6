"""CLIP-ReID's image-text losses: supervised contrastive (stage 1) and i2t logits (stage 2)."""
import torch.nn as nn
import torch.nn.functional as F

from .precision import float32


class SupConLoss(nn.Module):
    """Supervised contrastive loss between two sets of features, temperature 1.

    For each row i of ``a``: log-softmax of a_i . b_j over all j, averaged over the j whose
    label equals a_i's; the loss is minus the mean over rows. Stage 1 of CLIP-ReID uses
    ``loss(img, text, t, t) + loss(text, img, t, t)``. Features are used as given (upstream
    does not normalise them).
    """

    def __init__(self, temperature=1.0):
        super().__init__()
        self.temperature = temperature

    @float32
    def forward(self, a_feats, b_feats, a_labels, b_labels):
        mask = (a_labels.unsqueeze(1) == b_labels.unsqueeze(0)).float()
        logits = a_feats @ b_feats.t() / self.temperature
        log_prob = F.log_softmax(logits, dim=1)
        mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
        return -mean_log_prob_pos.mean()


@float32
def image_to_text_logits(image_proj, text_features):
    """CLIP-ReID stage-2 classifier: image projections against one text feature per identity."""
    return image_proj @ text_features.t()
