"""Find, fetch and read OpenAI CLIP weights: MODEL.PRETRAIN_PATH, else the cache, else download.

`load_clip_state_dict` knows every OpenAI source, reads both OpenAI formats (TorchScript
archive and plain state_dict) and checks that what it read is CLIP. Other pretrainings
(MODEL.CLIP_PRETRAINED) are fetched through open_clip by clip_pretrained and read here by
`load_clip_file`.
"""
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import warnings

import torch
from open_clip.pretrained import get_pretrained_url, list_pretrained_tags_by_model
from tqdm import tqdm

from utils.distributed import is_main_process
from utils.errors import ReIDError

logger = logging.getLogger(__name__)

# Where OpenAI's `clip` package keeps its downloads (ViT-B-16.pt, RN50.pt, ...); expanded at use.
CLIP_CACHE_DIR = os.path.join('~', '.cache', 'clip')
# Keys every OpenAI CLIP state_dict has, whatever the image tower.
_TEXT_KEYS = ('token_embedding.weight', 'positional_embedding', 'ln_final.weight',
              'text_projection')
_VISION_KEYS = ('visual.proj', 'visual.attnpool.positional_embedding')
# Scalars OpenAI's TorchScript archives carry next to the weights.
_ARCHIVE_EXTRAS = ('input_resolution', 'context_length', 'vocab_size')


def canonical_name(name):
    """'ViT-B/16' -> 'ViT-B-16' (the file name OpenAI's package uses in its cache)."""
    return str(name).strip().replace('/', '-')


def official_url(name):
    """OpenAI's download URL for a CLIP name, or '' when OpenAI published no such model."""
    name = canonical_name(name)
    if 'openai' not in list_pretrained_tags_by_model(name):
        return ''
    return get_pretrained_url(name, 'openai')


def cache_path(name):
    return os.path.join(os.path.expanduser(CLIP_CACHE_DIR), canonical_name(name) + '.pt')


def _missing_message(name, target, reason):
    return (f'CLIP weights for MODEL.NAME {name!r} are not available ({reason}). '
            f'Put the OpenAI file at {target} or set MODEL.PRETRAIN_PATH to the path of a '
            f'CLIP weights file (OpenAI TorchScript archive or state_dict).')


def download(url, target):
    """Fetch url into target atomically, checking the sha256 that OpenAI puts in the URL path."""
    expected = url.split('/')[-2]
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    digest = hashlib.sha256()
    partial = f'{target}.{os.getpid()}.part'
    try:
        with urllib.request.urlopen(url, timeout=60) as source, open(partial, 'wb') as out:
            total = int(source.headers.get('Content-Length') or 0) or None
            with tqdm(total=total, unit='B', unit_scale=True, desc=os.path.basename(target),
                      disable=not is_main_process()) as bar:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != expected:
            raise ReIDError(f'downloaded {url} but its sha256 {digest.hexdigest()} differs from '
                            f'{expected}; try again, or place the file at {target} yourself')
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def resolve_clip_file(name, pretrain_path=''):
    """Path of the weights file: MODEL.PRETRAIN_PATH, else the cache, else a fresh download."""
    if pretrain_path:
        path = os.path.expanduser(pretrain_path)
        if not os.path.isfile(path):
            raise ReIDError(f'MODEL.PRETRAIN_PATH {pretrain_path}: no such file')
        return path
    target = cache_path(name)
    if os.path.isfile(target):
        return target
    url = official_url(name)
    if not url:
        raise ReIDError(_missing_message(name, target, 'no official OpenAI download for this name'))
    logger.info('downloading CLIP weights %s to %s', url, target)
    try:
        return download(url, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, 'reason', None) or err
        raise ReIDError(_missing_message(name, target, f'download failed: {reason}')) from None


def read_clip_file(path):
    """A state_dict from either OpenAI format (TorchScript archive, or torch.save'd
    state_dict); torch.load also reads open_clip's safetensors files."""
    try:
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; OpenAI uses it
            warnings.simplefilter('ignore', FutureWarning)
            state_dict = torch.jit.load(path, map_location='cpu').state_dict()
    except (RuntimeError, ValueError):  # not a TorchScript archive
        try:
            state_dict = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same answer
            raise ReIDError(f'{path} is neither a TorchScript archive nor a state_dict that '
                            f'torch.load can read safely ({type(err).__name__}: '
                            f'{str(err).splitlines()[0] if str(err) else ""})') from None
    if isinstance(state_dict, dict) and isinstance(state_dict.get('state_dict'), dict):
        state_dict = state_dict['state_dict']
    if not isinstance(state_dict, dict):
        raise ReIDError(f'{path} holds a {type(state_dict).__name__}, not CLIP weights')
    return {k.removeprefix('module.'): v for k, v in state_dict.items()}


def check_clip_state_dict(state_dict, path):
    """Stop with a clear message unless the state_dict is an OpenAI-layout CLIP model."""
    missing = [k for k in _TEXT_KEYS if k not in state_dict]
    if not any(k in state_dict for k in _VISION_KEYS):
        missing.append(' or '.join(_VISION_KEYS))
    if missing:
        raise ReIDError(f'{path} does not hold OpenAI CLIP weights: missing {", ".join(missing)}')
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ReIDError(f'{path}: entries that are not tensors: {", ".join(bad[:5])}')


def load_clip_state_dict(name, pretrain_path=''):
    """The CLIP state_dict for MODEL.NAME / MODEL.PRETRAIN_PATH, checked, scalar extras removed."""
    path = resolve_clip_file(name, pretrain_path)
    return load_clip_file(path), path


def load_clip_file(path):
    """The checked CLIP state_dict in the file at path, scalar extras removed."""
    state_dict = read_clip_file(path)
    check_clip_state_dict(state_dict, path)
    for key in _ARCHIVE_EXTRAS:
        state_dict.pop(key, None)
    logger.info('CLIP weights read from %s', path)
    return state_dict
