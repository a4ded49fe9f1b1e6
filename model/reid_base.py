"""What the three re-ID models share: the adapted CLIP image encoder, SIE, BN-necks, test
features and checkpoint loading. Parameter names follow upstream CLIP-ReID."""
import logging

import torch
import torch.nn as nn

from utils.errors import ReIDError

from .checkpoint import load_into, read_state_dict
from .image_encoders import make_image_encoder

logger = logging.getLogger(__name__)


def make_classifier(in_features, num_class):
    """Bias-free identity classifier, weights N(0, 0.001) as upstream."""
    layer = nn.Linear(in_features, num_class, bias=False)
    nn.init.normal_(layer.weight, std=0.001)
    return layer


def _choice(cfg_value, key, allowed):
    if cfg_value not in allowed:
        raise ReIDError(f'{key} must be one of {", ".join(map(repr, allowed))}, got {cfg_value!r}')
    return cfg_value


class ReIDModel(nn.Module):
    """Base class. Subclasses add heads and define forward; see INTERFACES for outputs."""

    def __init__(self, cfg, num_class, camera_num, view_num, clip_model, arch):
        super().__init__()
        if int(num_class) < 1:
            raise ReIDError(f'the model needs at least one identity, got num_class={num_class}')
        self.num_class = int(num_class)
        self.arch = arch
        self.neck = _choice(cfg.MODEL.NECK, 'MODEL.NECK', ('bnneck', 'no'))
        self.neck_feat = _choice(cfg.TEST.NECK_FEAT, 'TEST.NECK_FEAT', ('after', 'before'))
        stride = list(cfg.MODEL.STRIDE_SIZE)
        if len(stride) != 2 or min(stride) < 1:
            raise ReIDError(f'MODEL.STRIDE_SIZE must be [h, w] >= 1, got {stride}')
        self.image_encoder = make_image_encoder(clip_model, arch, list(cfg.INPUT.SIZE_TRAIN),
                                                stride, cfg.MODEL.LAST_STRIDE)
        self.in_planes = arch.feature_dim
        self.in_planes_proj = arch.embed_dim
        self.bottleneck = self._make_neck(self.in_planes)
        self.bottleneck_proj = self._make_neck(self.in_planes_proj)
        self._make_sie(cfg, camera_num, view_num)

    def _make_neck(self, dim):
        if self.neck == 'no':
            return nn.Identity()
        bn = nn.BatchNorm1d(dim)
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
        bn.bias.requires_grad_(False)  # BNNeck: no shift, as upstream
        return bn

    def _make_sie(self, cfg, camera_num, view_num):
        self.sie_camera, self.sie_view = bool(cfg.MODEL.SIE_CAMERA), bool(cfg.MODEL.SIE_VIEW)
        self.sie_coe = float(cfg.MODEL.SIE_COE)
        self.camera_num, self.view_num = int(camera_num), int(view_num)
        rows = {(True, True): camera_num * view_num, (True, False): camera_num,
                (False, True): view_num}.get((self.sie_camera, self.sie_view))
        if rows is None:
            return
        if not self.arch.is_vit:
            raise ReIDError('MODEL.SIE_CAMERA / MODEL.SIE_VIEW need a ViT backbone; '
                            f'MODEL.NAME {cfg.MODEL.NAME} gave a ResNet')
        if rows < 1:
            raise ReIDError(f'SIE needs camera/view counts >= 1, got {camera_num} cameras, '
                            f'{view_num} views')
        if self.sie_view and view_num <= 1:
            logger.warning('MODEL.SIE_VIEW with a single view in the training set: every image '
                           'gets the same view embedding (VeRi viewpoints come from '
                           'DATASETS.VIEW_LABELS)')
        self.cv_embed = nn.Parameter(torch.zeros(int(rows), self.in_planes))
        nn.init.trunc_normal_(self.cv_embed, std=0.02)
        logger.info('SIE embedding: %d rows (camera %s, view %s), scale %.2f',
                    rows, self.sie_camera, self.sie_view, self.sie_coe)

    def sie_embedding(self, cam_label=None, view_label=None):
        """[B, width] camera/view embedding for the class token, or None when SIE is off or
        the labels it needs are not given.

        In eval mode a camera (view) id the table has no row for, id >= the trained count
        (another dataset evaluated with DATASETS.TEST_NAMES, or by the test scripts), gets the
        mean of the trained rows: the model was only ever trained with some camera embedding
        added to its class token, so leaving it out would shift the features by an amount
        never seen, while the mean is the expected embedding of a camera it does not know.
        Ids within the table keep their row (the test scripts cannot tell a foreign camera 0
        from the trained camera 0). Training never meets such ids."""
        if self.sie_camera and self.sie_view:
            cam, view = cam_label, view_label
        elif self.sie_camera or self.sie_view:
            cam, view = (cam_label, None) if self.sie_camera else (None, view_label)
        else:
            return None
        if (self.sie_camera and cam is None) or (self.sie_view and view is None):
            return None
        device = self.cv_embed.device
        cam, view = (None if i is None else torch.as_tensor(i, device=device) for i in (cam, view))
        if self.training:  # as always: the flat row (camera * views + view)
            flat = view if cam is None else cam if view is None else cam * self.view_num + view
            return self.sie_coe * self.cv_embed[flat]
        return self.sie_coe * self._sie_rows(cam, view)

    def _sie_rows(self, cam, view):
        """Rows of the SIE table for these ids, unseen ids mapped to the mean row."""
        cams = self.camera_num if self.sie_camera else 1
        views = self.view_num if self.sie_view else 1
        grid = self.cv_embed.view(cams, views, -1)
        cam = torch.zeros_like(view) if cam is None else cam
        view = torch.zeros_like(cam) if view is None else view
        cam_known, view_known = cam < cams, view < views
        c, v = cam.clamp(max=cams - 1), view.clamp(max=views - 1)
        rows = grid[c, v]
        rows = torch.where((~cam_known & view_known).unsqueeze(-1), grid.mean(0)[v], rows)
        rows = torch.where((cam_known & ~view_known).unsqueeze(-1), grid.mean(1)[c], rows)
        return torch.where((~cam_known & ~view_known).unsqueeze(-1), grid.mean((0, 1)), rows)

    def image_features(self, x, cam_label=None, view_label=None):
        """(intermediate feature, image feature, projected feature), each [B, C]."""
        return self.image_encoder(x, self.sie_embedding(cam_label, view_label))

    def encode_image(self, x, cam_label=None, view_label=None):
        """The projected image feature (CLIP-ReID's stage-1 cache)."""
        return self.image_features(x, cam_label, view_label)[2]

    def neck_features(self, img_feature, img_feature_proj):
        """cat(BN-neck(feature), BN-neck(projection))."""
        return torch.cat([self.bottleneck(img_feature), self.bottleneck_proj(img_feature_proj)],
                         dim=1)

    def test_feature(self, img_feature, img_feature_proj):
        """Eval-mode output: after or before the BN-necks (TEST.NECK_FEAT), as upstream."""
        if self.neck_feat == 'after':
            return self.neck_features(img_feature, img_feature_proj)
        return torch.cat([img_feature, img_feature_proj], dim=1)

    def load_param(self, path):
        """Load a re-ID checkpoint (see model.checkpoint.load_into for what is checked)."""
        return load_into(self, read_state_dict(path), path)
