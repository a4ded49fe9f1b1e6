"""Checkpoint I/O: atomic writes, plain weight files, and full training state for resuming."""
import glob
import os
import random
import zipfile

import numpy as np
import torch

from utils.atomic import DiskFullError, atomic_write, remove_stale_temp_files
from utils.errors import ReIDError

STATE_SUFFIX = '_state.pth'


def atomic_save(obj, path):
    """torch.save through utils.atomic.atomic_write: a crash never leaves half a file. A full
    device stops with a DiskFullError that also names the checkpoints kept beside path."""
    try:
        with atomic_write(path) as f:
            torch.save(obj, f)
    except DiskFullError as err:
        raise DiskFullError(err.path, kept_files_message(os.path.dirname(err.path))) from None


def kept_files_message(folder):
    """Which checkpoint and training state folder still holds (after a failed save)."""
    weights = [p for p in glob.glob(os.path.join(glob.escape(folder), '*.pth'))
               if not p.endswith(STATE_SUFFIX)]
    states = state_files(folder)
    if not weights and not states:
        return f'{folder} holds no earlier checkpoint'
    parts = [f'newest checkpoint {os.path.basename(max(weights, key=os.path.getmtime))}'
             if weights else 'no checkpoint']
    parts += ([f'training state {", ".join(sorted(os.path.basename(p) for p in states))}']
              if states else ['no training state'])
    return f'{folder} keeps its earlier files: {" and ".join(parts)}'


def unreadable_reason(path, err):
    """Why torch.load could not read path, in words: empty, truncated / damaged, or ''
    (a file that is complete but not loadable safely: the caller says what it expected)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    if size == 0:
        return 'the file is empty (0 bytes; a run stopped while saving it?)'
    with open(path, 'rb') as f:
        zip_format = f.read(4) == b'PK\x03\x04'
    cut = isinstance(err, EOFError) or (
        isinstance(err, RuntimeError) and ('EOF' in str(err) or 'corrupted' in str(err)))
    if cut or (zip_format and not zipfile.is_zipfile(path)):
        return (f'the file is truncated or damaged ({size} bytes; an interrupted save or '
                'copy?) and cannot be read')
    return ''


def unwrap(model):
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, 'module') else model


def save_weights(model, path):
    """A plain state_dict with the upstream key names (no 'module.' prefix)."""
    atomic_save(unwrap(model).state_dict(), path)


def rng_state():
    """The host generators' states, as tensors and plain values so weights_only loading works.

    No CUDA generator states: every epoch reseeds all generators (CUDA ones included) from
    SOLVER.SEED, so they are not needed, and a run may resume on fewer or more GPUs.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {'python': random.getstate(), 'torch': torch.get_rng_state(),
            'numpy': (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}


def set_rng_state(state):
    """Restore rng_state(); CUDA states that older files hold are ignored (see rng_state)."""
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])


def state_path(output_dir, name, stage):
    return os.path.join(output_dir, f'{name}_{stage}{STATE_SUFFIX}')


def model_file_name(cfg):
    """MODEL.NAME as checkpoint files spell it ('ViT-B/16' -> 'ViT-B-16')."""
    return cfg.MODEL.NAME.replace('/', '-')


def state_files(folder):
    """The training states (*_state.pth) in folder."""
    return glob.glob(os.path.join(glob.escape(folder), '*' + STATE_SUFFIX))


def find_resume_file(cfg, resume_flag):
    """SOLVER.RESUME names a file; --resume or SOLVER.RESUME 'auto' takes the newest state."""
    choice = cfg.SOLVER.RESUME or ('auto' if resume_flag else '')
    if not choice:
        return None
    remove_stale_temp_files(cfg.OUTPUT_DIR)
    if choice != 'auto':
        if not os.path.isfile(choice):
            raise ReIDError(f'SOLVER.RESUME: no training-state file at {choice}')
        return choice
    found = state_files(cfg.OUTPUT_DIR)
    if not found:
        raise ReIDError(f'--resume: no *{STATE_SUFFIX} training state in {cfg.OUTPUT_DIR}')
    return max(found, key=os.path.getmtime)


def load_training_state(path):
    """The dict written by the trainer (data only: loaded with weights_only)."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated or foreign files
        reason = unreadable_reason(path, err) or \
            f'{type(err).__name__}: {(str(err).strip().splitlines() or ["no details"])[0][:200]}'
        raise ReIDError(f'cannot read training state {path}: {reason}') from None
    if not isinstance(state, dict) or 'model' not in state or 'epoch' not in state:
        raise ReIDError(f'{path} is not a training-state file of this framework')
    return state
