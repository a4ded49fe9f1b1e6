"""make_model: CLIP weights -> adapted backbone -> the re-ID model named by MODEL.METHOD."""
import logging

from utils.errors import ReIDError

from .baseline import Baseline
from .clip_backbone import clip_from_state_dict
from .clip_pretrained import OPENAI, load_pretrained_state_dict, pretraining, size_differences
from .clipreid import CLIPReID
from .pcl import PCLModel

logger = logging.getLogger(__name__)

MODELS = {'clipreid': CLIPReID, 'pcl': PCLModel, 'baseline': Baseline}


def load_clip(cfg):
    """(open_clip CLIP holding the weights of MODEL.NAME / MODEL.CLIP_PRETRAINED /
    MODEL.PRETRAIN_PATH, its ClipArch), built as the pretraining tag says."""
    spec = pretraining(cfg.MODEL.NAME, cfg.MODEL.CLIP_PRETRAINED)
    state_dict, path = load_pretrained_state_dict(spec, cfg.MODEL.PRETRAIN_PATH)
    model, arch = clip_from_state_dict(state_dict, path, spec)
    logger.info('CLIP %s pretraining %r: %s activation%s', spec.name, spec.tag, spec.activation,
                f' (open_clip trained it with mean {list(spec.mean)}, std {list(spec.std)})'
                if spec.mean else '')
    mismatch = normalisation_mismatch(spec, cfg.INPUT)
    if mismatch:
        logger.warning(mismatch)
    if spec.tag != OPENAI and size_differences(spec, arch):
        logger.warning('the weights in %s are not open_clip\'s %s (%s): check MODEL.NAME',
                       path, spec.name, '; '.join(size_differences(spec, arch)))
    return model, arch


def normalisation_mismatch(spec, input_cfg):
    """A warning when the pretraining's mean / std (as open_clip lists them) are not
    INPUT.PIXEL_MEAN / PIXEL_STD: the images would be normalised unlike in pretraining."""
    if not spec.mean:
        return ''
    ours = list(input_cfg.PIXEL_MEAN) + list(input_cfg.PIXEL_STD)
    theirs = list(spec.mean) + list(spec.std)
    if all(abs(a - b) < 1e-3 for a, b in zip(ours, theirs)):
        return ''
    return (f'MODEL.CLIP_PRETRAINED {spec.tag!r} was trained on images normalised with mean '
            f'{list(spec.mean)} and std {list(spec.std)}, but INPUT.PIXEL_MEAN / PIXEL_STD '
            f'are {list(input_cfg.PIXEL_MEAN)} / {list(input_cfg.PIXEL_STD)}: set them to match')


def make_model(cfg, num_class, camera_num, view_num, object_word=None, method=None):
    """Build the model of `method` (default cfg.MODEL.METHOD; '' means 'clipreid').

    object_word: the dataset's word for the CLIP-ReID prompt ('person', 'vehicle', a
    species); MODEL.PROMPT_OBJECT overrides it. Other methods ignore it.
    MODEL.PRETRAIN_CHOICE 'self' then loads MODEL.PRETRAIN_PATH_REID into the whole model.
    """
    method = method or cfg.MODEL.METHOD or 'clipreid'
    if method not in MODELS:
        raise ReIDError(f'MODEL.METHOD {method!r} is not one of {", ".join(MODELS)}')
    choice = cfg.MODEL.PRETRAIN_CHOICE
    if choice not in ('imagenet', 'self'):
        raise ReIDError(f"MODEL.PRETRAIN_CHOICE must be 'imagenet' or 'self', got {choice!r}")
    if choice == 'self' and not cfg.MODEL.PRETRAIN_PATH_REID:
        raise ReIDError("MODEL.PRETRAIN_CHOICE 'self' needs MODEL.PRETRAIN_PATH_REID")
    clip_model, arch = load_clip(cfg)
    model = MODELS[method](cfg, num_class, camera_num, view_num, clip_model, arch,
                           object_word=object_word)
    if choice == 'self':
        model.load_param(cfg.MODEL.PRETRAIN_PATH_REID)
    logger.info('built %s model on %s: %d identities, feature %d + projection %d',
                method, 'ViT' if arch.is_vit else 'ResNet', num_class, model.in_planes,
                model.in_planes_proj)
    return model
