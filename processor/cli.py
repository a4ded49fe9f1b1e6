"""The bodies of the entry scripts: parse, configure, build, run."""
import os

from config import parse_args
from datasets import make_dataloader
from model import make_model
from model.checkpoint import (checkpoint_identities, checkpoint_sie_sizes, load_into,
                              read_trained)
from utils import distributed as du
from utils.checkpoint import find_resume_file, load_training_state
from utils.logger import get_logger
from utils.run_folder import refuse_earlier_run, save_run_config
from utils.run_lock import run_folder_lock
from utils.runtime import config_for, setup_run

from .best import check_resumable, held_out_identities, write_split_record
from .evaluation import evaluate_sets, make_evaluators
from .recipes import resumable_stages, train_baseline, train_clipreid, train_pcl
from .selection import chooses_on_validation, evaluate_chosen, is_sweep, warn_test_sweep

TRAINERS = {'clipreid': train_clipreid, 'pcl': train_pcl, 'baseline': train_baseline}


def _build(cfg, runtime, training=True, num_classes=None, state_dict=None):
    """(data, model); with a checkpoint's state_dict the model's SIE table takes the
    checkpoint's camera / view counts (it may be evaluated on another dataset)."""
    data = make_dataloader(cfg, training)
    cameras, views = data.camera_num, data.view_num
    if state_dict is not None:
        cameras, views = checkpoint_sie_sizes(state_dict, cfg, cameras, views)
    model = make_model(cfg, num_classes or data.num_classes, cameras, views,
                       object_word=data.dataset.object_word)
    return data, model.to(runtime.device)


def train_main(method, description):
    args = parse_args(description, resume=True)
    cfg = config_for(method, args)
    with run_folder_lock(cfg):  # before anything in OUTPUT_DIR is read or written
        resume = find_resume_file(cfg, args.resume)
        refuse_earlier_run(cfg, resuming=resume is not None)
        runtime = setup_run(cfg, 'train_log.txt')
        data, model = _build(cfg, runtime)
        resume_state = load_training_state(resume) if resume else None
        if resume_state is not None:  # a refused resume leaves the run's files as they were
            check_resumable(resume_state, model, held_out_identities(data),
                            resumable_stages(cfg, method))
        with du.fail_together():  # rank 0 writes them; the others must not wait for rank 0
            get_logger().info('config written to %s', save_run_config(cfg))
            write_split_record(cfg, data)
        TRAINERS[method](cfg, model, data, runtime, resume_state=resume_state)
        if cfg.SOLVER.PLOT_CURVES:
            with du.fail_together():  # rank 0 draws
                if du.is_main_process():
                    plot_curves(cfg)


def plot_curves(cfg):
    """OUTPUT_DIR/curves.png (and curves.csv) of the run's metrics.csv."""
    from utils.plots import plot_training_curves
    method = cfg.MODEL.METHOD + (' unsupervised' if cfg.MODEL.UNSUPERVISED else '')
    path = plot_training_curves(os.path.join(cfg.OUTPUT_DIR, 'metrics.csv'),
                                os.path.join(cfg.OUTPUT_DIR, 'curves.png'),
                                title=f'{method} | {cfg.DATASETS.NAMES} | {cfg.OUTPUT_DIR}')
    if path:
        get_logger().info('training curves drawn in %s', path)


def test_main(description, rerank=False):
    args = parse_args(description)
    return evaluate(config_for('', args), rerank)


def evaluate(cfg, rerank=False):
    """The test scripts' evaluation of cfg's TEST.WEIGHT (re-ranked when `rerank` or
    TEST.RE_RANKING); returns the EvalResult. A re-ranking sweep with a validation split
    (DATASETS.VAL_IDENTITIES) is scored on that split, and the test split with its best
    setting alone (processor/selection.py)."""
    cfg, state_dict = read_trained(cfg)
    runtime = setup_run(cfg, 'test_rerank_log.txt' if rerank else 'test_log.txt')
    cfg.defrost()
    cfg.TEST.RE_RANKING = cfg.TEST.RE_RANKING or rerank
    cfg.freeze()
    # The checkpoint's identity count: evaluation needs no training split (custom lists).
    data, model = _build(cfg, runtime, training=False,
                         num_classes=checkpoint_identities(state_dict), state_dict=state_dict)
    load_into(model, state_dict, cfg.TEST.WEIGHT)
    if chooses_on_validation(cfg):
        return evaluate_chosen(cfg, state_dict, model, data, runtime)
    # with a validation split in the config, say which split these figures are
    heading = 'test split' if cfg.DATASETS.VAL_IDENTITIES > 0 else None
    result, _ = evaluate_sets(cfg, model, data, make_evaluators(cfg, data), runtime,
                              heading=heading)
    if is_sweep(cfg):
        warn_test_sweep()
    return result
