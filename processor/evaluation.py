"""Evaluation on every test set of a run (DATASETS.TEST_NAMES, or the training datasets),
each by its own protocol, and the table of their figures.

With one test set and no DATASETS.TEST_NAMES this is do_inference as it always was: the log
and the curve names (val/<metric>) are unchanged. Otherwise each dataset is evaluated in
turn (its own 'Validation results' block), the log ends with one table, a row per dataset
(mAP, Rank-1/5/10; with re-ranking on, the plain figures and the re-ranked ones), and the
curves are named val/<dataset>/<metric>. The first dataset's result is the run's result
(summary lines, anything that picks a best checkpoint); every dataset's result is in its
extra['datasets'].

With a validation split (DATASETS.VAL_IDENTITIES; data.val_sets) training scores it instead
(split 'validation': evaluators that write no pictures or distance matrix) and names it in the
log; the test sets are scored at the end of training under the curve prefixes test/last and
test/best (processor/engine.py).
"""
import copy
import os
from collections import OrderedDict
from dataclasses import replace

from utils.logger import get_logger
from utils.metrics import make_evaluator

from .inference import do_inference

RANKS = (1, 5, 10)
SPLITS = ('test', 'validation')


def split_sets(data, split='test'):
    """The EvaluationSets of a split: data.test_sets, or data.val_sets (empty when
    DATASETS.VAL_IDENTITIES is off)."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, not {split!r}')
    return list(data.test_sets) if split == 'test' else list(getattr(data, 'val_sets', []))


def make_evaluators(cfg, data, split='test'):
    """One evaluator per set of the split. Test sets: with several, each writes its pictures
    and distance matrix under OUTPUT_DIR/<dataset>. Validation sets are scored by their own
    protocol and AP (datasets/validation.py; TEST.PROTOCOL and TEST.AP_MODE name the test
    split's) and write no files: TEST.DIST_MAT and TEST.VISUALIZE are the test split's too."""
    sets = split_sets(data, split)
    several = len(sets) > 1
    evaluators = []
    for test_set in sets:
        evaluator = make_evaluator(cfg, test_set.num_query, test_set.dataset.protocol)
        if split == 'validation':
            evaluator.protocol = test_set.dataset.protocol
            evaluator.ap_mode = getattr(test_set.dataset, 'ap_mode', evaluator.ap_mode)
            evaluator.dist_mat_path, evaluator.visualize, evaluator.keep_distmat = '', 0, False
            evaluator.caption = f'{test_set.name} | ' + evaluator.caption.split(' | ')[-1]
        elif data.per_dataset:
            evaluator.caption = f'{test_set.name} | ' + evaluator.caption.split(' | ')[-1]
        if several and split == 'test':
            evaluator.output_dir = os.path.join(cfg.OUTPUT_DIR, test_set.name)
            if evaluator.dist_mat_path:
                folder, name = os.path.split(evaluator.dist_mat_path)
                evaluator.dist_mat_path = os.path.join(folder, test_set.name, name)
                os.makedirs(os.path.dirname(evaluator.dist_mat_path), exist_ok=True)
        evaluators.append(evaluator)
    return evaluators


def plain_twin(evaluator):
    """The evaluator's figures without re-ranking, from the features it already holds."""
    twin = copy.copy(evaluator)
    twin.spec = replace(evaluator.spec, rerank=None)
    twin.dist_mat_path, twin.visualize, twin.keep_distmat = '', 0, False
    return twin.compute()


def evaluate_sets(cfg, model, data, evaluators, runtime, split='test', heading=None,
                  prefix='val'):
    """(the first set's EvalResult, {curve name: value}) of evaluating every set of `split`
    with its evaluator. `heading` names what is scored in the log (do_inference's `split`,
    e.g. 'test split, best checkpoint (epoch 40, ...)'); curves are named <prefix>/<metric>,
    or <prefix>/<dataset>/<metric> when the figures are per dataset (several sets, or test
    sets under DATASETS.TEST_NAMES)."""
    sets = split_sets(data, split)
    per_dataset = data.per_dataset if split == 'test' else len(sets) > 1
    if not per_dataset:
        loader = data.val_loader if split == 'test' else sets[0].val_loader
        result = do_inference(cfg, model, loader, evaluators[0], runtime, split=heading)
        return result, {f'{prefix}/{name}': value for name, value in result.summary().items()}
    logger = get_logger()
    results, plain, curves = OrderedDict(), {}, {}
    for test_set, evaluator in zip(sets, evaluators):
        logger.info('Evaluation on %s:', test_set.name)
        named = heading and f'{heading}, {test_set.name}'
        results[test_set.name] = do_inference(cfg, model, test_set.val_loader, evaluator,
                                              runtime, split=named)
        if evaluator.spec.rerank:
            plain[test_set.name] = plain_twin(evaluator)
        for name, value in results[test_set.name].summary().items():
            curves[f'{prefix}/{test_set.name}/{name}'] = value
    for line in table(results, plain, heading):
        logger.info(line)
    first = next(iter(results.values()))
    first.extra['datasets'] = results
    return first, curves


def figures(result):
    """(mAP, Rank-1, Rank-5, Rank-10) of a result; None where the protocol has no such rank
    (ATRW reports top-1 / top-5 per track; a small VehicleID gallery cuts the CMC)."""
    ranks = [result.metrics.get(f'Rank-{k}') for k in RANKS]
    return (result.mAP, *ranks)


def table(results, plain=None, heading=None):
    """Lines of the per-dataset table; the first row is the run's summary. `heading` names
    the split in the table's title."""
    def cells(values):
        return ' | '.join('   -  ' if v is None else f'{100 * v:5.1f}%' for v in values)

    plain = plain or {}
    head = ' | '.join(f'{n:>6}' for n in ('mAP', *(f'R-{k}' for k in RANKS)))
    title = f'  {"dataset":<12} | {head}'
    if plain:
        title = f'  {"dataset":<12} | {head} | ' + ' | '.join(
            f'{"rr " + n:>6}' for n in ('mAP', *(f'R{k}' for k in RANKS)))
    rule = '  ' + '-' * (len(title) - 2)
    where = f' on the {heading}' if heading else ''
    lines = [f'Results per dataset{where} (the first row is the run\'s result'
             + ('; plain distances, then re-ranked' if plain else '') + '):', rule, title, rule]
    for name, result in results.items():
        row = cells(figures(plain[name])) + ' | ' + cells(figures(result)) if name in plain \
            else cells(figures(result))
        lines.append(f'  {name:<12} | {row}')
    lines.append(rule)
    return lines
