"""What every entry script does first: config for its method, device, processes, seed, logs."""
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from config import load_config
from utils import distributed as du
from utils.errors import ReIDError
from utils.logger import setup_logger


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    amp_dtype: torch.dtype | None  # autocast dtype on CUDA; None = full fp32


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
    choice = cfg.SOLVER.AMP
    if choice not in ('auto', 'bf16', 'fp16', 'off'):
        raise ReIDError(f"SOLVER.AMP must be 'auto', 'bf16', 'fp16' or 'off', not {choice!r}")
    if device.type != 'cuda' or choice == 'off':
        return None
    if choice == 'fp16' or (choice == 'auto' and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def setup_run(cfg, log_name):
    """Pick the device, join torchrun's process group, seed, and start the log."""
    if cfg.MODEL.DEVICE not in ('cuda', 'cpu'):
        raise ReIDError(f"MODEL.DEVICE must be 'cuda' or 'cpu', not {cfg.MODEL.DEVICE!r}")
    if (cfg.MODEL.DEVICE == 'cuda' and not du.launched_by_torchrun()
            and 'CUDA_VISIBLE_DEVICES' not in os.environ):
        os.environ['CUDA_VISIBLE_DEVICES'] = str(cfg.MODEL.DEVICE_ID)
    if cfg.MODEL.DIST_TRAIN and not du.launched_by_torchrun():
        raise ReIDError('MODEL.DIST_TRAIN is True but this process was not started by torchrun; '
                        'run: torchrun --nproc_per_node N <script> ...')
    use_cuda = cfg.MODEL.DEVICE == 'cuda' and torch.cuda.is_available()
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
    if cfg.SOLVER.DETERMINISTIC:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif use_cuda:
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.SOLVER.SEED)
    logger.info('Running on %s (%d process%s)\n%s', device, world, 'es' if world > 1 else '',
                cfg.dump())
    logging.captureWarnings(True)
    return Runtime(device, rank, world, _amp_dtype(cfg, device))
