"""Baseline: the CLIP image encoder fine-tuned with BN-neck ID heads, no text."""
from .reid_base import ReIDModel, make_classifier


class Baseline(ReIDModel):
    def __init__(self, cfg, num_class, camera_num, view_num, clip_model, arch, object_word=None):
        super().__init__(cfg, num_class, camera_num, view_num, clip_model, arch)
        self.classifier = make_classifier(self.in_planes, self.num_class)
        self.classifier_proj = make_classifier(self.in_planes_proj, self.num_class)

    def forward(self, x, label=None, cam_label=None, view_label=None):
        img_feature_last, img_feature, img_feature_proj = self.image_features(
            x, cam_label, view_label)
        if not self.training:
            return self.test_feature(img_feature, img_feature_proj)
        feat = self.bottleneck(img_feature)
        feat_proj = self.bottleneck_proj(img_feature_proj)
        # the triplet loss sums over all three features, as upstream make_model.py
        return {'logits': [self.classifier(feat), self.classifier_proj(feat_proj)],
                'feats': [img_feature_last, img_feature, img_feature_proj]}
