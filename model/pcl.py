"""PCL-CLIP (Li & Gong, 2023): BN-neck features of the image feature and its projection,
concatenated, feed one identity classifier; the ViT patch projection stays frozen."""
from .reid_base import ReIDModel, make_classifier


class PCLModel(ReIDModel):
    def __init__(self, cfg, num_class, camera_num, view_num, clip_model, arch, object_word=None):
        super().__init__(cfg, num_class, camera_num, view_num, clip_model, arch)
        self.classifier = make_classifier(self.in_planes + self.in_planes_proj, self.num_class)
        if arch.is_vit:  # upstream freezes the patch embedding for stability
            self.image_encoder.conv1.weight.requires_grad_(False)

    def forward(self, x, label=None, cam_label=None, view_label=None):
        _, img_feature, img_feature_proj = self.image_features(x, cam_label, view_label)
        if not self.training:
            return self.test_feature(img_feature, img_feature_proj)
        out_feat = self.neck_features(img_feature, img_feature_proj)
        return {'logits': [self.classifier(out_feat)], 'feats': [out_feat]}

    def memory_features(self, x):
        """What the centroid memory is built from: the BN-neck features of the training loss,
        without SIE (upstream calls model(img) with no camera labels), whatever
        TEST.NECK_FEAT says."""
        _, img_feature, img_feature_proj = self.image_features(x)
        return self.neck_features(img_feature, img_feature_proj)
