"""Checkpoint I/O: atomic writes, plain weight files, and full training state for resuming."""
import glob
import os
import random

import numpy as np
import torch

from utils.errors import ReIDError

STATE_SUFFIX = '_state.pth'


def atomic_save(obj, path):
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
    except Exception as err:  # truncated or foreign files
        raise ReIDError(f'cannot read training state {path}: {err}') from None
    if not isinstance(state, dict) or 'model' not in state or 'epoch' not in state:
        raise ReIDError(f'{path} is not a training-state file of this framework')
    return state
