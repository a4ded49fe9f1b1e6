"""Which CLIP: open_clip's pretrained tags (MODEL.CLIP_PRETRAINED), the model settings each
tag carries, and its weights through open_clip's own download and cache.

'openai' (the default) keeps the OpenAI path of clip_weights (cache ~/.cache/clip/<name>.pt,
checksum). Any other tag is fetched by ``open_clip.pretrained.download_pretrained`` (the
Hugging Face hub when open_clip prefers it, else the tag's URL into ~/.cache/clip), after a
look for a file placed by hand in ~/.cache/clip/<hub repository>/. A local file
(MODEL.PRETRAIN_PATH) is built as its tag says, too.
"""
import http.client
import logging
import os
from dataclasses import dataclass, field

from open_clip import pretrained as oc_pretrained
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.factory import get_model_config

from utils.errors import ReIDError, one_line

from . import clip_weights

logger = logging.getLogger(__name__)

OPENAI = 'openai'
# Keys of open_clip's model configs that give sizes: the loader reads those off the weights.
_SIZE_KEYS = {'vision_cfg': {'image_size', 'layers', 'width', 'patch_size', 'head_width'},
              'text_cfg': {'context_length', 'vocab_size', 'width', 'heads', 'layers'}}
# The other tower settings the re-ID encoders run as open_clip builds them.
_TOWER_KEYS = {'mlp_ratio', 'ls_init_value'}
_TOP_KEYS = {'embed_dim', 'vision_cfg', 'text_cfg', 'quick_gelu'}


@dataclass(frozen=True)
class ClipPretraining:
    """What MODEL.NAME + MODEL.CLIP_PRETRAINED say about the model the weights need."""
    name: str  # open_clip architecture name ('ViT-B-16')
    tag: str  # open_clip pretrained tag ('openai', 'laion2b_s34b_b88k', ...)
    quick_gelu: bool
    vision: dict = field(default_factory=dict)  # extra CLIPVisionCfg settings
    text: dict = field(default_factory=dict)  # extra CLIPTextCfg settings
    mean: tuple = ()  # normalisation the weights were trained with (open_clip's config)
    std: tuple = ()
    sizes: dict = field(default_factory=dict)  # open_clip's model config, {} if it has none

    @property
    def activation(self):
        return 'QuickGELU' if self.quick_gelu else 'GELU'


def clean_tag(tag):
    """open_clip's spelling of a tag: 'LAION2B-s34b-b88k' -> 'laion2b_s34b_b88k'."""
    return str(tag).strip().lower().replace('-', '_')


def _tower_settings(name, model_cfg):
    """(vision, text) settings beyond the sizes, refusing what the re-ID towers cannot run."""
    if not model_cfg:
        return {}, {}
    extra = sorted(set(model_cfg) - _TOP_KEYS)
    towers = []
    for tower in ('vision_cfg', 'text_cfg'):
        settings = model_cfg.get(tower, {})
        extra += [f'{tower}.{k}' for k in sorted(set(settings) - _SIZE_KEYS[tower] - _TOWER_KEYS)]
        towers.append({k: settings[k] for k in sorted(_TOWER_KEYS & set(settings))})
    if extra:
        raise ReIDError(f'MODEL.NAME {name!r}: open_clip builds it with {", ".join(extra)}, '
                        'which the re-ID image and text encoders do not support')
    return tuple(towers)


def buildable_names():
    """open_clip architectures with pretrained tags that the re-ID encoders can run."""
    names = []
    for name in dict.fromkeys(n for n, _ in oc_pretrained.list_pretrained()):
        try:
            _tower_settings(name, get_model_config(name))
        except ReIDError:
            continue
        names.append(name)
    return names


def pretraining(name, tag=OPENAI):
    """The ClipPretraining of MODEL.NAME / MODEL.CLIP_PRETRAINED; one-line ReIDError for an
    unknown tag (listing the valid ones) or an architecture open_clip has no tag for.

    'openai' is QuickGELU whatever the name (today's behaviour: OpenAI trained every CLIP
    with it); any other tag takes `quick_gelu` from open_clip's per-tag config, or from the
    model config of a '-quickgelu' name.
    """
    name = clip_weights.canonical_name(name)
    tag = clean_tag(tag)
    if not tag:
        raise ReIDError("MODEL.CLIP_PRETRAINED is empty; give open_clip's pretrained tag of "
                        "the weights ('openai' for OpenAI's)")
    model_cfg = get_model_config(name) or {}
    if tag != OPENAI and not oc_pretrained.is_pretrained_cfg(name, tag):
        valid = oc_pretrained.list_pretrained_tags_by_model(name)
        if not valid:
            raise ReIDError(f'MODEL.CLIP_PRETRAINED {tag!r}: open_clip has no pretrained '
                            f'weights for MODEL.NAME {name!r}; names with tags: '
                            f'{", ".join(buildable_names())}')
        raise ReIDError(f'MODEL.CLIP_PRETRAINED {tag!r} is not an open_clip pretraining of '
                        f'MODEL.NAME {name!r}; valid tags: {", ".join(valid)}')
    vision, text = _tower_settings(name, model_cfg)
    tag_cfg = oc_pretrained.get_pretrained_cfg(name, tag)
    quick_gelu = tag == OPENAI or bool(tag_cfg.get('quick_gelu') or model_cfg.get('quick_gelu'))
    return ClipPretraining(name, tag, quick_gelu, vision, text,
                           tuple(tag_cfg.get('mean', ())), tuple(tag_cfg.get('std', ())),
                           model_cfg)


def _source(tag_cfg):
    """(where it comes from, file name, folder to place it in, hub?) as open_clip fetches it:
    the hub when it is installed and the tag has a repository, else the tag's URL."""
    hub = tag_cfg.get('hf_hub', '')
    cache = os.path.expanduser(clip_weights.CLIP_CACHE_DIR)
    if hub and oc_pretrained.has_hf_hub():
        repo, filename = os.path.split(hub)  # 'org/repo/' means open_clip's default file
        filename = filename or HF_WEIGHTS_NAME
        return f'https://huggingface.co/{repo}', filename, os.path.join(cache, repo), True
    url = tag_cfg.get('url', '')
    return url, os.path.basename(url), cache, False


def fetch(spec):
    """Path of the weights of a non-OpenAI tag: a file placed by hand, else open_clip's
    download (hub cache or ~/.cache/clip). Offline: one line naming the file and folder."""
    tag_cfg = oc_pretrained.get_pretrained_cfg(spec.name, spec.tag)
    where, filename, folder, hub = _source(tag_cfg)
    if not filename:
        raise ReIDError(f'open_clip names no download for MODEL.NAME {spec.name!r} '
                        f'MODEL.CLIP_PRETRAINED {spec.tag!r}; set MODEL.PRETRAIN_PATH')
    if hub:  # open_clip's hub cache has its own layout; a hand-placed file goes here
        names = (filename, HF_SAFE_WEIGHTS_NAME) if filename == HF_WEIGHTS_NAME else (filename,)
        for placed in names:
            if os.path.isfile(os.path.join(folder, placed)):
                return os.path.join(folder, placed)
    logger.info('fetching CLIP %s %s through open_clip from %s', spec.name, spec.tag, where)
    try:
        path = oc_pretrained.download_pretrained(tag_cfg, cache_dir=None if hub else folder)
    except (OSError, RuntimeError, ValueError, http.client.HTTPException) as err:
        reason = one_line(getattr(err, 'reason', None) or err)
        raise ReIDError(f'CLIP weights of MODEL.NAME {spec.name!r} MODEL.CLIP_PRETRAINED '
                        f'{spec.tag!r} could not be downloaded '
                        f'({reason[:300]}); place {filename} (from {where}) in {folder}, or set '
                        'MODEL.PRETRAIN_PATH to its path') from None
    if not path or not os.path.isfile(path):
        raise ReIDError(f'open_clip returned no file for {spec.name} {spec.tag}; place '
                        f'{filename} (from {where}) in {folder}')
    return path


def load_pretrained_state_dict(spec, pretrain_path=''):
    """(state_dict, path) of the weights: MODEL.PRETRAIN_PATH, else OpenAI's path for
    'openai', else open_clip's download for the tag."""
    if pretrain_path or spec.tag == OPENAI:
        return clip_weights.load_clip_state_dict(spec.name, pretrain_path)
    path = fetch(spec)
    return clip_weights.load_clip_file(path), path


def size_differences(spec, arch):
    """'what: config vs weights' for each size where the weights differ from open_clip's
    config of MODEL.NAME ([] when they agree or open_clip has no config for the name)."""
    cfg = spec.sizes
    if not cfg:
        return []
    vision, text = cfg.get('vision_cfg', {}), cfg.get('text_cfg', {})
    layers = vision.get('layers')
    pairs = {'embed_dim': (cfg.get('embed_dim'), arch.embed_dim),
             'vision layers': (tuple(layers) if isinstance(layers, list) else layers,
                               arch.vision_layers),
             'vision width': (vision.get('width'), arch.vision_width),
             'patch size': (vision.get('patch_size'), arch.vision_patch_size),
             'text width': (text.get('width'), arch.text_width),
             'text layers': (text.get('layers'), arch.text_layers)}
    return [f'{what}: {want} vs {got}' for what, (want, got) in pairs.items() if want != got]
