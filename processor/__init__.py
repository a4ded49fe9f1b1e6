from .feature_extractor import FeatureExtractor
from .inference import do_inference, extract_features
from .recipes import train_baseline, train_clipreid, train_pcl

__all__ = ['FeatureExtractor', 'do_inference', 'extract_features', 'train_baseline',
           'train_clipreid', 'train_pcl']
