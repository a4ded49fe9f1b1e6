"""What a training run leaves in OUTPUT_DIR besides checkpoints: its config, and the guard that
keeps a fresh run from overwriting an earlier one."""
import glob
import os
import re

from utils import distributed as du
from utils.atomic import atomic_write
from utils.checkpoint import STATE_SUFFIX, model_file_name, state_files
from utils.errors import ReIDError

CONFIG_FILE = 'config.yaml'


def earlier_run_files(cfg):
    """Files of an earlier run that a fresh one would overwrite: training states and this
    MODEL.NAME's checkpoints."""
    folder, name = cfg.OUTPUT_DIR, glob.escape(model_file_name(cfg))
    found = set(state_files(folder))
    found |= set(glob.glob(os.path.join(glob.escape(folder), f'{name}_*.pth')))
    return sorted(found)


def refuse_earlier_run(cfg, resuming):
    """Stop a fresh run (not resuming) whose OUTPUT_DIR holds another run's training state or
    checkpoints, saying how to resume or where else to go."""
    if resuming:
        return
    found = earlier_run_files(cfg)
    if not found:
        return
    shown = ', '.join(os.path.basename(p) for p in found[:3]) + (', ...' if len(found) > 3 else '')
    states = [p for p in found if p.endswith(STATE_SUFFIX)]
    how = ('add --resume to continue that run, or give another OUTPUT_DIR'
           if states else 'give another OUTPUT_DIR, or move those files away')
    raise ReIDError(f'OUTPUT_DIR {cfg.OUTPUT_DIR} already holds an earlier training run '
                    f'({shown}); a fresh run would overwrite it: {how}')


def save_run_config(cfg):
    """Write the run's full config to OUTPUT_DIR/config.yaml (rank 0); the test scripts and
    tools take it as --config_file."""
    path = os.path.join(cfg.OUTPUT_DIR, CONFIG_FILE)
    if du.is_main_process():
        with atomic_write(path, 'w') as f:
            f.write(cfg.dump())
    return path


def newest_checkpoint(folder, name):
    """The weights file <name>_<epoch>.pth with the highest epoch in folder ('' if none)."""
    pattern = re.compile(re.escape(name) + r'_(\d+)\.pth$')
    found = [(int(m.group(1)), f) for f in os.listdir(folder)
             if (m := pattern.match(f))] if os.path.isdir(folder) else []
    return os.path.join(folder, max(found)[1]) if found else ''


def missing_weight_message(cfg):
    """What to say when TEST.WEIGHT is empty: an example, the run's newest checkpoint if any."""
    name = model_file_name(cfg)
    example = newest_checkpoint(cfg.OUTPUT_DIR, name) or os.path.join(cfg.OUTPUT_DIR,
                                                                        f'{name}_60.pth')
    return f'TEST.WEIGHT is empty: give the checkpoint to use, e.g. TEST.WEIGHT {example}'
