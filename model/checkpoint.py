"""Read re-ID checkpoints (plain state_dicts with upstream key names) and load them with checks."""
import logging
import zipfile

import torch

from utils.checkpoint import unreadable_reason
from utils.errors import ReIDError
from utils.run_folder import missing_weight_message

from .clip_weights import check_clip_state_dict, read_clip_file

logger = logging.getLogger(__name__)

# Parameters with one row per training identity: dropped when the identity count differs
# (a model trained on one dataset and evaluated or fine-tuned on another).
PER_IDENTITY_KEYS = ('classifier.weight', 'classifier_proj.weight', 'prompt_learner.cls_ctx')
# The config keys that shape a checkpoint's entries: (key prefix, config keys, why). When a
# checkpoint does not fit, the first entry matching an offending key is named as the likely
# cause. Architecture widths come from MODEL.NAME / MODEL.PRETRAIN_PATH (the fallback).
SHAPING_KEYS = (
    ('image_encoder.positional_embedding', 'INPUT.SIZE_TRAIN (and MODEL.STRIDE_SIZE)',
     'the ViT position grid follows the training image size and patch stride'),
    ('image_encoder.attnpool.positional_embedding', 'INPUT.SIZE_TRAIN (and MODEL.LAST_STRIDE)',
     'the ResNet attention-pool grid follows the training image size and last stride'),
    ('cv_embed', 'MODEL.SIE_CAMERA / MODEL.SIE_VIEW',
     'the SIE embedding exists only with them, one row per camera / view of the dataset'),
    ('prompt_learner.', 'MODEL.METHOD (or MODEL.PROMPT_N_CTX)',
     'only CLIP-ReID models have prompts, with PROMPT_N_CTX learned tokens'),
    ('classifier', 'MODEL.METHOD', 'the classifiers differ between clipreid, pcl and baseline'),
    ('bottleneck', 'MODEL.NECK', "'no' has no BN-neck layers"),
)


def _clip_file_message(path):
    return (f'checkpoint {path} holds OpenAI CLIP weights, not a re-ID model: CLIP weights go '
            'to MODEL.PRETRAIN_PATH; TEST.WEIGHT takes a checkpoint written by training, '
            'OUTPUT_DIR/<MODEL.NAME>_<epoch>.pth')


def _is_clip(state_dict):
    try:
        check_clip_state_dict(state_dict, '')
        return True
    except ReIDError:
        return False


def _is_torchscript(path):
    """A TorchScript archive (OpenAI ships CLIP so): a zip holding constants.pkl and code."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith('/constants.pkl') for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_state_dict(path):
    """The state_dict in a checkpoint file ('module.' prefixes of DDP removed).

    A training-state dict with a 'model' entry gives that entry; anything else that is not a
    mapping of names to tensors (a pickled model, an optimizer state...) is refused, and a
    CLIP weights file is named as such.
    """
    if _is_torchscript(path):
        if _is_clip(read_clip_file(path)):
            raise ReIDError(_clip_file_message(path))
        raise ReIDError(f'checkpoint {path} is a TorchScript archive, not a state_dict; save '
                        'model.state_dict() instead')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise ReIDError(f'checkpoint {path}: no such file') from None
    except IsADirectoryError:
        raise ReIDError(f'checkpoint {path} is a directory, not a file') from None
    except Exception as err:  # noqa: BLE001 - the safe unpickler raises many kinds
        reason = unreadable_reason(path, err)
        if reason:
            raise ReIDError(f'checkpoint {path}: {reason}') from None
        detail = (str(err).strip().splitlines() or ['no details'])[0][:200]
        raise ReIDError(f'checkpoint {path} is not a state_dict that can be loaded safely (a '
                        'whole pickled model or a damaged file?); save model.state_dict() '
                        f'instead. ({type(err).__name__}: {detail})'
                        ) from None
    if isinstance(obj, dict) and isinstance(obj.get('model'), dict):
        obj = obj['model']
    if not isinstance(obj, dict) or not obj:
        raise ReIDError(f'checkpoint {path} holds a {type(obj).__name__}, not a state_dict')
    if _is_clip(obj):
        raise ReIDError(_clip_file_message(path))
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ReIDError(f'checkpoint {path} is not a state_dict: entries {", ".join(bad[:5])} '
                        'are not tensors (a training-state file without a "model" entry?)')
    return {k.removeprefix('module.'): v for k, v in obj.items()}


def _summarise(keys, limit=12):
    """All keys when few; else one entry per module ('image_encoder.layer1.* (30 keys)')."""
    if len(keys) <= limit:
        return ', '.join(keys)
    groups = {}
    for key in keys:
        groups.setdefault('.'.join(key.split(' ')[0].split('.')[:2]), []).append(key)
    return ', '.join(members[0] if len(members) == 1 else f'{prefix}.* ({len(members)} keys)'
                     for prefix, members in groups.items())


def _per_identity_mismatch(key, theirs, ours):
    return (key in PER_IDENTITY_KEYS and theirs.dim() == ours.dim()
            and theirs.shape[1:] == ours.shape[1:] and theirs.shape[0] != ours.shape[0])


def likely_config_key(own, state_dict):
    """A sentence naming the config key that most likely makes state_dict not fit own ('' when
    no key explains the difference: another architecture)."""
    absent = [k for k in own if k not in state_dict] + [k for k in state_dict if k not in own]
    shapes = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    grids = tuple(prefix for prefix, keys, _ in SHAPING_KEYS if keys.startswith('INPUT.'))
    if any(k.startswith('image_encoder.') and (k in absent or not k.startswith(grids))
           for k in absent + shapes):
        return ''  # the image encoders differ: another architecture
    offending = absent + shapes
    for prefix, keys, why in SHAPING_KEYS:
        if any(k.startswith(prefix) for k in offending):
            return (f'The config key that most likely differs from the training run: {keys} '
                    f"({why}); pass the run's OUTPUT_DIR/config.yaml as --config_file")
    return ''


def mismatch_report(own, state_dict, ignore=()):
    """'' when state_dict fits own (a model's state_dict) exactly; else every missing,
    unexpected and mis-shaped key, grouped by module when there are many."""
    missing = sorted(k for k in own if k not in state_dict and k not in ignore)
    unexpected = sorted(k for k in state_dict if k not in own)
    shapes = sorted(f'{k} {tuple(state_dict[k].shape)} in file vs {tuple(v.shape)} in model'
                    for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape)
    return '; '.join(f'{label} ({len(keys)}): {_summarise(keys)}' for label, keys in
                     (('missing', missing), ('unexpected', unexpected), ('mis-shaped', shapes))
                     if keys)


def load_into(model, state_dict, source):
    """Copy state_dict into model; identity-sized rows of another dataset are skipped with a
    note, any other difference stops with a ReIDError listing every offending key."""
    own = model.state_dict()
    skipped = [k for k, v in state_dict.items()
               if k in own and _per_identity_mismatch(k, v, own[k])]
    state_dict = {k: v for k, v in state_dict.items() if k not in skipped}
    report = mismatch_report(own, state_dict, ignore=skipped)
    if report:
        hint = likely_config_key(own, state_dict)
        if hint:
            raise ReIDError(f'checkpoint {source} does not fit this model: {report}. {hint}')
        raise ReIDError(f'checkpoint {source} does not fit this model (another architecture, '
                        f'MODEL.NAME or MODEL.PRETRAIN_PATH?): {report}')
    if skipped:
        logger.info('checkpoint %s was trained with another number of identities; kept this '
                    "model's %s", source, ', '.join(skipped))
    model.load_state_dict(state_dict, strict=False)
    logger.info('loaded checkpoint %s', source)
    return skipped


def infer_method(state_dict):
    """Model family of a checkpoint: 'clipreid', 'pcl' or 'baseline' (for the test scripts)."""
    if isinstance(state_dict, str):
        state_dict = read_state_dict(state_dict)
    if any(k.startswith('prompt_learner.') for k in state_dict):
        return 'clipreid'
    cls = state_dict.get('classifier.weight')
    if cls is not None and 'classifier_proj.weight' not in state_dict:
        if 'image_encoder.proj' in state_dict:  # ViT: [width, embed]
            width, proj = state_dict['image_encoder.proj'].shape
        elif 'image_encoder.attnpool.c_proj.weight' in state_dict:  # ResNet: [embed, width]
            proj, width = state_dict['image_encoder.attnpool.c_proj.weight'].shape
        else:
            return 'baseline'
        if cls.shape[1] == width + proj:
            return 'pcl'
    return 'baseline'


def checkpoint_identities(state_dict):
    """Number of training identities of a checkpoint (rows of its classifier or prompts)."""
    for key in ('classifier.weight', 'prompt_learner.cls_ctx'):
        if key in state_dict:
            return state_dict[key].shape[0]
    return 1


def checkpoint_sie_sizes(state_dict, cfg, camera_num, view_num):
    """(cameras, views) of a checkpoint's SIE table (cv_embed), so that a model evaluated on
    another dataset is built with the table it was trained with; the dataset's counts when
    the checkpoint or the config has no SIE. Camera ids beyond the table: see
    model.reid_base.ReIDModel.sie_embedding."""
    table = state_dict.get('cv_embed')
    camera, view = bool(cfg.MODEL.SIE_CAMERA), bool(cfg.MODEL.SIE_VIEW)
    if table is None or not (camera or view):
        return camera_num, view_num
    rows = int(table.shape[0])
    if camera and view:
        if rows % view_num:
            raise ReIDError(f'checkpoint SIE table has {rows} rows, not a multiple of the '
                            f'{view_num} views of the evaluated dataset (MODEL.SIE_VIEW)')
        return rows // view_num, view_num
    return (rows, view_num) if camera else (camera_num, rows)


def read_trained(cfg, weight=''):
    """(cfg with TEST.WEIGHT and MODEL.METHOD filled in, the checkpoint's state_dict) of the
    trained weights to test or use: `weight`, else TEST.WEIGHT; with neither, one error that
    names the run's newest checkpoint."""
    weight = str(weight or cfg.TEST.WEIGHT)
    if not weight:
        raise ReIDError(missing_weight_message(cfg))
    state_dict = read_state_dict(weight)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.WEIGHT = weight
    cfg.MODEL.METHOD = cfg.MODEL.METHOD or infer_method(state_dict)
    cfg.freeze()
    return cfg, state_dict
