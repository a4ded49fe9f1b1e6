"""Models: `make_model(cfg, num_class, camera_num, view_num, object_word=None)` builds the
CLIP-ReID, PCL or baseline model named by MODEL.METHOD; `infer_method` reads the family off
a checkpoint's keys."""
from .baseline import Baseline
from .checkpoint import infer_method, load_into, read_state_dict
from .clip_backbone import ClipArch, clip_from_state_dict, infer_clip_arch
from .clip_weights import load_clip_state_dict
from .clipreid import CLIPReID
from .factory import MODELS, load_clip, make_model
from .pcl import PCLModel

__all__ = ['make_model', 'MODELS', 'load_clip', 'infer_method', 'read_state_dict', 'load_into',
           'load_clip_state_dict', 'clip_from_state_dict', 'infer_clip_arch', 'ClipArch',
           'CLIPReID', 'PCLModel', 'Baseline']
