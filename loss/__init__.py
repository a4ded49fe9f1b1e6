"""Losses: identity CE, batch-hard triplet, supervised contrastive, center, cluster memory."""
from .camera_proxy_memory import CameraProxyMemory
from .center import CenterLoss
from .cluster_memory import ClusterMemory, compute_centroids
from .cross_entropy import CrossEntropy, CrossEntropyLabelSmooth
from .make_loss import ReIDLoss, make_loss
from .supcon import SupConLoss, image_to_text_logits
from .triplet import TripletLoss, euclidean_dist, hard_example_mining

__all__ = ['CameraProxyMemory', 'CenterLoss', 'ClusterMemory', 'compute_centroids', 'CrossEntropy',
           'CrossEntropyLabelSmooth', 'ReIDLoss', 'make_loss', 'SupConLoss',
           'image_to_text_logits', 'TripletLoss', 'euclidean_dist', 'hard_example_mining']
