"""Heat maps of what drives a match: Grad-CAM of the distance between evaluation features.

    mapper = HeatMapper(extractor.model, extractor.cfg, extractor.device)
    maps = mapper('query.jpg', ['g1.jpg', 'g2.jpg'])   # [query map, g1 map, g2 map]

Each map is a float32 array at its image's own size (height x width), >= 0, larger where
the image matters more for the match: the Grad-CAM of the evaluation distance (TEST.DISTANCE
on the features the test scripts score, TEST.FEAT_NORM included). A gallery image's map
explains its distance to the query (the query's feature held fixed); the query's map
explains its mean distance to the gallery images shown (theirs held fixed). The sign is
that of a similarity: minus the squared euclidean distance, or the cosine similarity.

Why Grad-CAM and not attention rollout: rollout multiplies the attention matrices of the
blocks and shows where the class token looks, whatever it is compared with; it is the same
map for a match and a mismatch, and it exists only for a ViT. Grad-CAM follows the gradient
of this pair's distance, so it shows what makes these two images close, and the same method
serves the ResNet. Where it is read:

- ViT (CLIP-ReID, PCL, the baseline; SIE and overlapping patches included): the patch
  tokens entering the last block, i.e. the output of the second-to-last block. The
  evaluation feature is the class token after the last block, which reads the patch tokens
  only through that block's attention: the tokens after it do not reach the feature at all,
  so this is the latest place where patch tokens carry the gradient. The weights are
  per token (LayerCAM's rule): map(token) = ReLU(sum over channels of ReLU(gradient) x
  activation). Grad-CAM's one weight per channel (the gradient averaged over the tokens)
  assumes a channel means the same thing everywhere, as a conv's does; a ViT's residual
  stream does not. On the region test of tests/test_heatmaps.py (a tiny ViT trained on
  pictures whose identity lies in one eighth of the area), over four seeds, the per-token
  weights put 34-60% of the heat there after training (8-15% before), the channel-averaged
  ones 8-20%.
- ResNet (RN50): Grad-CAM on the output of the last stage (layer4), as in the Grad-CAM
  paper: weights = gradient averaged over the map, map = ReLU(sum over channels of weight x
  activation); 55% of the heat in the region above after the same training (untrained 6%).

SIE: camera ids given with the images reach the camera embedding (MODEL.SIE_CAMERA) as in
evaluation; a model that also embeds views (MODEL.SIE_VIEW) gets no SIE embedding here, as
view ids are not passed (its maps are those of features without it).

The images are transformed as evaluation does (a plain resize to INPUT.SIZE_TEST), so the
map on the grid is resized back to each image's size bilinearly. The part of the network
before the read layer runs once without gradients; only the rest (one block, or the
attention pool, and the BN-necks) runs with them, so heat maps cost little more than
features. The result is deterministic (the same model and images give the same maps).
"""
import logging

import numpy as np
import torch
import torch.nn.functional as F

from datasets import build_transforms
from utils.checkpoint import unwrap
from utils.metrics import wants_feat_norm

from .feature_extractor import to_pil


class _Stop(Exception):
    """Raised by the hook once the read layer's input is captured: the rest is not needed."""


class HeatMapper:
    """Call it with a query image and gallery images (paths or PIL images) and, for SIE
    models, their camera ids; returns [query map, gallery maps...] (see the module docstring).
    `model` is a re-ID model (make_model; its eval forward gives the evaluation features)."""

    def __init__(self, model, cfg, device=None):
        self.model = unwrap(model)
        self.encoder = self.model.image_encoder
        self.is_vit = hasattr(self.encoder, 'transformer')
        self.device = torch.device(device) if device is not None else \
            next(self.model.parameters()).device
        self.transform = build_transforms(cfg, is_train=False)
        self.metric = cfg.TEST.DISTANCE
        self.normalise = wants_feat_norm(cfg.TEST.FEAT_NORM)
        self.uses_cameras = bool(cfg.MODEL.SIE_CAMERA)
        if cfg.MODEL.SIE_VIEW:
            logging.getLogger('reid').warning(
                'MODEL.SIE_VIEW: heat maps leave the view embedding out (no view ids reach '
                'them), so they explain features that differ from the evaluated ones')
        self.batch = max(1, int(cfg.TEST.IMS_PER_BATCH))

    # ----- the two halves of the evaluation forward -------------------------------------------
    def activations(self, images, camids=None):
        """The read layer's activations [B, 1 + h*w, C] (ViT) or [B, C, h, w] (ResNet) of a
        batch of transformed images, as the model's own eval forward computes them."""
        store = {}

        def keep_input(module, args):
            store['acts'] = args[0]
            raise _Stop

        def keep_output(module, args, output):
            store['acts'] = output
            raise _Stop

        if self.is_vit:
            hook = self.encoder.transformer.resblocks[-1].register_forward_pre_hook(keep_input)
        else:
            hook = self.encoder.layer4.register_forward_hook(keep_output)
        cams = None
        if self.uses_cameras and camids is not None:
            cams = torch.as_tensor(np.asarray(camids), dtype=torch.int64, device=self.device)
        try:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                self.model(images.to(self.device), cam_label=cams)
        except _Stop:
            pass
        finally:
            hook.remove()
        return store['acts'].float()

    def features(self, acts):
        """Evaluation features [B, D] from the read layer's activations (the rest of the eval
        forward: last block + ln_post + projection, or layer4 pooling + attention pool; then
        the BN-necks and TEST.FEAT_NORM)."""
        enc = self.encoder
        if self.is_vit:
            last = enc.ln_post(enc.transformer.resblocks[-1](acts)[:, 0])
            proj = last @ enc.proj
        else:
            last, proj = acts.mean(dim=(2, 3)), enc.attnpool(acts)
        feats = self.model.test_feature(last, proj).float()
        return F.normalize(feats, dim=1) if self.normalise else feats

    def similarity(self, a, b):
        """Minus TEST.DISTANCE between rows of a and b (squared euclidean, or 1 - cosine)."""
        if self.metric == 'cosine':
            return (a * b).sum(1) - 1
        return -(a - b).pow(2).sum(1)

    # ----- Grad-CAM ------------------------------------------------------------------------
    def cam(self, acts, grads):
        """[B, h, w] maps: ViT ReLU(sum_c ReLU(gradient) x token) per patch token; ResNet
        Grad-CAM ReLU(sum_c mean-gradient_c x activation_c)."""
        if self.is_vit:
            tokens, g = acts[:, 1:], grads[:, 1:]  # patch tokens only
            maps = (tokens * F.relu(g)).sum(-1)
            return F.relu(maps).reshape(len(acts), *self.encoder.grid)
        return F.relu((acts * grads.mean(dim=(2, 3), keepdim=True)).sum(1))

    def grid_maps(self, query, gallery, q_camid=None, g_camids=None):
        """[1 + G, h, w] maps on the read layer's grid (query first)."""
        images = [to_pil(query, 'query')] + [to_pil(g, f'gallery image {i}')
                                             for i, g in enumerate(gallery)]
        batch = torch.stack([self.transform(img) for img in images])
        cams = None
        if self.uses_cameras and q_camid is not None and g_camids is not None:
            cams = np.concatenate([[q_camid], np.asarray(g_camids)])
        acts = torch.cat([self.activations(batch[i:i + self.batch],
                                           None if cams is None else cams[i:i + self.batch])
                          for i in range(0, len(batch), self.batch)])
        leaf = acts.detach().requires_grad_(True)
        with torch.enable_grad(), torch.autocast(self.device.type, enabled=False):
            feats = self.features(leaf)
            q, g = feats[:1], feats[1:]
            # each gallery image against the fixed query, the query against the fixed gallery
            # (eval mode: every row's feature depends on its own activations only)
            target = self.similarity(q.detach(), g).sum()
            if len(g):
                target = target + self.similarity(q, g.detach()).mean()
            grads, = torch.autograd.grad(target, leaf)
        return self.cam(leaf.detach(), grads).cpu(), [img.size for img in images]

    def __call__(self, query, gallery, q_camid=None, g_camids=None):
        was_training = self.model.training
        self.model.eval()  # the evaluation features (BN-necks with their running statistics)
        try:
            maps, sizes = self.grid_maps(query, list(gallery), q_camid, g_camids)
        finally:
            self.model.train(was_training)
        return [F.interpolate(m[None, None], size=(h, w), mode='bilinear',
                              align_corners=False)[0, 0].numpy().astype(np.float32)
                for m, (w, h) in zip(maps, sizes)]


def mass_inside(heat, box):
    """Share of a heat map's total inside box = (top, left, bottom, right), in pixels."""
    heat = np.asarray(heat, dtype=np.float64)
    total = heat.sum()
    if total <= 0:
        return 0.0
    top, left, bottom, right = box
    return float(heat[top:bottom, left:right].sum() / total)
