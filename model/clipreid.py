"""CLIP-ReID (Li et al., AAAI 2023): image encoder with BN-neck heads on the feature and its
projection, plus per-identity learnable prompts read by the frozen CLIP text encoder."""
import logging

import torch

from .reid_base import ReIDModel, make_classifier
from .text_prompt import PromptLearner, TextEncoder

logger = logging.getLogger(__name__)


class CLIPReID(ReIDModel):
    def __init__(self, cfg, num_class, camera_num, view_num, clip_model, arch, object_word=None):
        super().__init__(cfg, num_class, camera_num, view_num, clip_model, arch)
        self.classifier = make_classifier(self.in_planes, self.num_class)
        self.classifier_proj = make_classifier(self.in_planes_proj, self.num_class)
        word = cfg.MODEL.PROMPT_OBJECT or object_word
        if not word:
            word = 'person'
            logger.warning("no prompt object word given (MODEL.PROMPT_OBJECT or the dataset's); "
                           "using 'person'")
        self.prompt_learner = PromptLearner(self.num_class, word, cfg.MODEL.PROMPT_N_CTX,
                                            clip_model.token_embedding, arch.context_length)
        self.text_encoder = TextEncoder(clip_model)
        self.text_encoder.requires_grad_(False)
        logger.info('CLIP-ReID prompt: %r', self.prompt_learner.text)

    def encode_text(self, labels):
        """Text features [B, D] of the identities' prompts; gradients reach cls_ctx only."""
        prompts = self.prompt_learner(labels)
        return self.text_encoder(prompts, self.prompt_learner.tokenized_prompts)

    def forward(self, x=None, label=None, cam_label=None, view_label=None, get_image=False,
                get_text=False):
        if get_text:  # upstream's call style, kept for ported scripts
            return self.encode_text(label)
        if get_image:
            return self.encode_image(x, cam_label, view_label)
        img_feature_last, img_feature, img_feature_proj = self.image_features(
            x, cam_label, view_label)
        if not self.training:
            return self.test_feature(img_feature, img_feature_proj)
        feat = self.bottleneck(img_feature)
        feat_proj = self.bottleneck_proj(img_feature_proj)
        return {'logits': [self.classifier(feat), self.classifier_proj(feat_proj)],
                'feats': [img_feature_last, img_feature, img_feature_proj],
                'image_proj': img_feature_proj}

    @torch.no_grad()
    def all_text_features(self, batch_size=64):
        """One text feature per identity, [num_class, D] (stage 2's i2t classifier)."""
        device = self.prompt_learner.cls_ctx.device
        labels = torch.arange(self.num_class, device=device)
        return torch.cat([self.encode_text(chunk) for chunk in labels.split(batch_size)])
