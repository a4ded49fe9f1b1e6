"""What every entry script does first: config for its method, device, processes, seed, logs."""
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from config import load_config
from config.defaults import _C
from utils import distributed as du
from utils.errors import ReIDError
from utils.logger import FILE_ONLY, setup_logger

DEVICES = ('cuda', 'cpu', 'auto')


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    amp_dtype: torch.dtype | None  # autocast dtype of training; None = full fp32


def config_for(method, args):
    """Load the config; a train script owns its method and refuses a config made for another."""
    cfg = load_config(args.config_file, args.opts)
    if method and cfg.MODEL.METHOD not in ('', method):
        raise ReIDError(f'{args.config_file or "config"} sets MODEL.METHOD '
                        f'{cfg.MODEL.METHOD!r}, but this script trains {method!r}')
    if method and method != 'pcl' and cfg.MODEL.UNSUPERVISED:
        raise ReIDError(f'MODEL.UNSUPERVISED is implemented for PCL-CLIP only (train_pcl.py); '
                        f'this script trains {method!r}')
    if method:
        cfg.defrost()
        cfg.MODEL.METHOD = method
        cfg.freeze()
    return cfg


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _amp_dtype(cfg, device):
    """Autocast dtype of SOLVER.AMP: 'bf16' / 'fp16' on any device (PyTorch autocasts on the
    CPU too), 'auto' = bf16 on a CUDA GPU that supports it, else fp16 on CUDA and full
    precision on the CPU, 'off' = full precision."""
    choice = cfg.SOLVER.AMP
    if choice not in ('auto', 'bf16', 'fp16', 'off'):
        raise ReIDError(f"SOLVER.AMP must be 'auto', 'bf16', 'fp16' or 'off', not {choice!r}")
    if choice == 'off' or (choice == 'auto' and device.type != 'cuda'):
        return None
    # 'auto': bf16 only where the GPU has bf16 tensor cores (not emulated, as on V100 / T4)
    if choice == 'fp16' or (choice == 'auto'
                            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        return torch.float16
    return torch.bfloat16


def wants_cuda(cfg):
    """MODEL.DEVICE 'cuda' or 'auto' (a GPU when there is one, silently the CPU otherwise)."""
    if cfg.MODEL.DEVICE not in DEVICES:
        raise ReIDError(f'MODEL.DEVICE must be one of {", ".join(map(repr, DEVICES))}, '
                        f'not {cfg.MODEL.DEVICE!r}')
    return cfg.MODEL.DEVICE != 'cpu'


def _apply_device_id(cfg):
    """Export MODEL.DEVICE_ID as CUDA_VISIBLE_DEVICES for a single-process CUDA run; returns
    a note when it cannot apply (torchrun places processes itself; an exported
    CUDA_VISIBLE_DEVICES wins), or ''."""
    wanted, visible = str(cfg.MODEL.DEVICE_ID), os.environ.get('CUDA_VISIBLE_DEVICES')
    if not wants_cuda(cfg):
        return ''
    if du.launched_by_torchrun():
        return '' if wanted == _C.MODEL.DEVICE_ID else (
            f'MODEL.DEVICE_ID {wanted} is not applied under torchrun: each process takes the '
            'GPU LOCAL_RANK among CUDA_VISIBLE_DEVICES')
    if visible is None:
        os.environ['CUDA_VISIBLE_DEVICES'] = wanted
        return ''
    return '' if visible == wanted else (
        f'MODEL.DEVICE_ID {wanted} is not applied: CUDA_VISIBLE_DEVICES is already {visible!r}')


def setup_run(cfg, log_name):
    """Pick the device, join torchrun's process group, seed, and start the log."""
    device_note = _apply_device_id(cfg)
    if cfg.SOLVER.DETERMINISTIC:  # cuBLAS reads it when its first handle is made
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    if cfg.MODEL.DIST_TRAIN and not du.launched_by_torchrun():
        raise ReIDError('MODEL.DIST_TRAIN is True but this process was not started by torchrun; '
                        'run: torchrun --nproc_per_node N <script> ...')
    use_cuda = wants_cuda(cfg) and torch.cuda.is_available()
    if cfg.MODEL.SYNC_BN and du.launched_by_torchrun() and not use_cuda:
        raise ReIDError('MODEL.SYNC_BN needs CUDA (PyTorch has no SyncBatchNorm on CPU); '
                        'set MODEL.SYNC_BN False to keep per-rank BatchNorm')
    if os.path.exists(cfg.OUTPUT_DIR) and not os.path.isdir(cfg.OUTPUT_DIR):
        raise ReIDError(f'OUTPUT_DIR {cfg.OUTPUT_DIR} is a file, not a folder')
    du.init_distributed('cuda' if use_cuda else 'cpu')
    device = torch.device('cuda', torch.cuda.current_device()) if use_cuda else torch.device('cpu')
    rank, world = du.get_rank(), du.get_world_size()
    logger = setup_logger(cfg.OUTPUT_DIR, log_name, rank)
    if cfg.MODEL.DEVICE == 'cuda' and not use_cuda:
        logger.warning('MODEL.DEVICE is cuda but no GPU is available: running on the CPU')
    elif use_cuda and device_note:
        logger.warning(device_note)
    if cfg.SOLVER.DETERMINISTIC:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif use_cuda:
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.SOLVER.SEED)
    logger.info('Running on %s (%d process%s)', device, world, 'es' if world > 1 else '')
    logger.info('Config:\n%s', cfg.dump(), extra=FILE_ONLY)
    logging.captureWarnings(True)
    amp = _amp_dtype(cfg, device)
    logger.info('Training precision: %s (SOLVER.AMP %s); evaluation in float32',
                {None: 'float32', torch.bfloat16: 'bf16 autocast',
                 torch.float16: 'fp16 autocast with GradScaler'}[amp], cfg.SOLVER.AMP)
    return Runtime(device, rank, world, amp)
