"""Re-ranking settings chosen on the validation split (DATASETS.VAL_IDENTITIES).

A re-ranking sweep (TEST.RE_RANKING_K1 / _K2 / _LAMBDA lists) scores every (k1, k2, lambda)
in one pass. Picking the best row of a sweep scored on the test split is selection on the
test set. With a validation split the test scripts score the sweep on the held-out
identities instead, take the setting with the highest validation mAP (ties: the first in the
sweep's own order) and evaluate the test split(s) once, with that setting alone; the test
result's extra['selected_rerank'] holds the choice.

The validation identities are drawn from the training set with DATASETS.VAL_IDENTITIES and
SOLVER.SEED: the checkpoint must come from a run trained with the same two values, or it
has seen them. The count is checked against the checkpoint's classifier rows (not for
unsupervised checkpoints, which have one row); the seed cannot be.
"""
from itertools import product

from model.checkpoint import PER_IDENTITY_KEYS, checkpoint_identities
from utils.errors import ReIDError
from utils.logger import get_logger
from utils.reranking import as_list

from .best import SPLIT_FILE, check_split_record
from .evaluation import evaluate_sets, make_evaluators

KEYS = ('RE_RANKING_K1', 'RE_RANKING_K2', 'RE_RANKING_LAMBDA')
COLUMNS = ('k1', 'k2', 'lambda')  # a sweep table's setting columns (utils.protocols.sweep_table)


def is_sweep(cfg):
    """True when re-ranking is on and TEST.RE_RANKING_K1 / _K2 / _LAMBDA make several settings."""
    return bool(cfg.TEST.RE_RANKING) and len(list(product(
        *(as_list(cfg.TEST[key]) for key in KEYS)))) > 1


def chooses_on_validation(cfg):
    """True when the test scripts choose the re-ranking setting on the validation split."""
    return cfg.DATASETS.VAL_IDENTITIES > 0 and is_sweep(cfg)


def map_column(table):
    """The name of a sweep table's mAP column (its first metric: 'mAP', 'mAP(trapezoid)'...)."""
    return next(name for name in table[0] if name not in COLUMNS)


def best_row(table):
    """Index of the sweep table's row with the highest mAP; ties go to the first row."""
    name = map_column(table)
    return max(range(len(table)), key=lambda i: table[i][name])  # max keeps the first maximum


def with_setting(cfg, row):
    """A copy of cfg whose re-ranking is the row's single (k1, k2, lambda)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.RE_RANKING_K1, cfg.TEST.RE_RANKING_K2 = int(row['k1']), int(row['k2'])
    cfg.TEST.RE_RANKING_LAMBDA = float(row['lambda'])
    cfg.freeze()
    return cfg


def check_trained_without(cfg, state_dict, data):
    """Stop when the checkpoint's identity count says it was not trained with the split: its
    classifier must have a row per training identity left after the hold-out."""
    if cfg.MODEL.UNSUPERVISED or not any(key in state_dict for key in PER_IDENTITY_KEYS):
        return
    rows, held = checkpoint_identities(state_dict), cfg.DATASETS.VAL_IDENTITIES
    left = data.dataset.num_train_pids
    if rows == left:
        return
    why = (f'all {rows} training identities: it was trained without the split, on the '
           'validation identities' if rows == left + held else
           f'{rows} identities, not the {left} that remain: it was trained on other identities')
    raise ReIDError(f'checkpoint {cfg.TEST.WEIGHT} cannot be validated on DATASETS.VAL_IDENTITIES '
                    f'{held}: its classifier has {why}; test a checkpoint of a run trained with '
                    'the same DATASETS.VAL_IDENTITIES and SOLVER.SEED, or set '
                    'DATASETS.VAL_IDENTITIES 0')


def evaluate_chosen(cfg, state_dict, model, data, runtime):
    """The test result of the re-ranking setting with the best validation mAP (see above)."""
    logger = get_logger()
    held = cfg.DATASETS.VAL_IDENTITIES
    logger.info('validation split: %d identities held out of the training set with SOLVER.SEED '
                '%d - the checkpoint must have been trained with the same two values', held,
                cfg.SOLVER.SEED)
    check_trained_without(cfg, state_dict, data)
    if not check_split_record(cfg, data):
        logger.warning('no %s beside %s: that the checkpoint was trained without these '
                       'identities cannot be checked beyond their count', SPLIT_FILE,
                       cfg.TEST.WEIGHT)
    val, _ = evaluate_sets(cfg, model, data, make_evaluators(cfg, data, 'validation'), runtime,
                           split='validation',
                           heading='validation split, the first setting of the sweep; the '
                                   'chosen one follows the table')
    table = val.extra['rerank_sweep']
    row = table[best_row(table)]
    name = map_column(table)
    setting = f"k1={row['k1']} k2={row['k2']} lambda={row['lambda']:g}"
    logger.info('Re-ranking chosen on the validation split: %s (validation %s %.1f%%, the best '
                'of %d settings, ties to the first); the test split is scored with it alone',
                setting, name, 100 * row[name], len(table))
    chosen = with_setting(cfg, row)
    result, _ = evaluate_sets(chosen, model, data, make_evaluators(chosen, data), runtime,
                              heading='test split, with the re-ranking setting chosen on '
                                      'the validation split')
    result.extra['selected_rerank'] = {'k1': row['k1'], 'k2': row['k2'],
                                       'lambda': row['lambda'], 'val_mAP': row[name],
                                       'validation_sweep': table}
    return result


def warn_test_sweep():
    """The log line after a sweep scored on the test split."""
    get_logger().warning(
        'the re-ranking sweep above is scored on the test split: choosing a setting from it is '
        'selection on the test set; DATASETS.VAL_IDENTITIES (with a checkpoint trained with it) '
        'chooses on a validation split held out of the training identities instead')
