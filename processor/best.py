"""The best-by-validation checkpoint of a training run, and the test split scored at its end.

With a validation split (DATASETS.VAL_IDENTITIES: data.val_sets) every evaluation during
training scores it. <MODEL.NAME>_best.pth holds the weights of the epoch with the highest
validation mAP (strictly higher: a tie leaves the earlier epoch); the trainer's `best`
record ({'epoch', 'mAP'}) is part of its training state, so a resumed run keeps it. After
the last epoch the test sets are scored once with the last weights and once with the best
checkpoint's (curves test/last/* and test/best/*); the model then holds the last weights
again, as the last checkpoint and the training state do.
"""
import hashlib
import json
import os

import torch

from model.checkpoint import mismatch_report
from utils import distributed as du
from utils.atomic import atomic_write
from utils.checkpoint import model_file_name, save_weights
from utils.errors import ReIDError

from .evaluation import evaluate_sets


SPLIT_FILE = 'validation_split.json'  # in OUTPUT_DIR: the identities a run held out


def held_out_identities(data):
    """The training labels the validation split holds out (a list), or None without one."""
    val_sets = getattr(data, 'val_sets', None)
    return list(val_sets[0].dataset.held_out) if val_sets else None


def check_resumable(state, net, held_out, stages):
    """Stop, before a resumed run writes anything, when the training state cannot continue
    it: a state of another training (stages: those this run may continue), another
    validation split (another DATASETS.VAL_IDENTITIES or SOLVER.SEED: its identities were
    trained on), or weights that do not fit the model."""
    if state.get('stage') not in stages:
        raise ReIDError(f'the training state to resume was written by {state.get("stage")!r} '
                        f'training; this run trains {" or ".join(map(repr, stages))}')
    if state.get('held_out') != held_out:
        def said(held):
            return f'held out identities {held}' if held else 'held out no identity'
        raise ReIDError(f'the training state to resume {said(state.get("held_out"))} for '
                        f'validation; this run {said(held_out)}: resume with the '
                        'DATASETS.VAL_IDENTITIES and SOLVER.SEED of the run')
    report = mismatch_report(net.state_dict(), state['model'])
    if report:
        raise ReIDError(f'the training state to resume does not fit this model: {report}')


def write_split_record(cfg, data):
    """OUTPUT_DIR/validation_split.json (rank 0): the held-out identities, which the test
    scripts compare with the split they draw before choosing anything on it."""
    held_out = held_out_identities(data)
    if held_out is None or not du.is_main_process():
        return
    record = {'DATASETS.VAL_IDENTITIES': cfg.DATASETS.VAL_IDENTITIES,
              'SOLVER.SEED': cfg.SOLVER.SEED, 'held_out': held_out}
    with atomic_write(os.path.join(cfg.OUTPUT_DIR, SPLIT_FILE), 'w') as f:
        json.dump(record, f)


def check_split_record(cfg, data):
    """Stop when the run that wrote TEST.WEIGHT held out other identities than this split
    (its validation_split.json beside the weights); False when there is no such record."""
    path = os.path.join(os.path.dirname(os.path.abspath(cfg.TEST.WEIGHT)), SPLIT_FILE)
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            record = json.load(f)
        held = record['held_out']
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReIDError(f'cannot read {path} ({type(err).__name__}: {err}): it should list the '
                        'identities the run held out') from None
    if held != held_out_identities(data):
        raise ReIDError(
            f'{cfg.TEST.WEIGHT} comes from a run that held out other identities '
            f"(DATASETS.VAL_IDENTITIES {record.get('DATASETS.VAL_IDENTITIES')}, SOLVER.SEED "
            f"{record.get('SOLVER.SEED')}, {path}) than this split (DATASETS.VAL_IDENTITIES "
            f'{cfg.DATASETS.VAL_IDENTITIES}, SOLVER.SEED {cfg.SOLVER.SEED}): its training '
            "identities would be validated on; use the run's values (its config.yaml)")
    return True


def best_file(cfg):
    return os.path.join(cfg.OUTPUT_DIR, f'{model_file_name(cfg)}_best.pth')


def file_digest(path):
    """sha256 of a file: which weights the record's best file holds."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            digest.update(block)
    return digest.hexdigest()


def note_best(trainer, epoch, mAP):
    """Keep this epoch's weights as the best when its validation mAP beats the record, and
    save the training state with the new record at once, so that --resume finds the record
    of the file (rank 0 decides for every rank)."""
    better = trainer.best is None or mAP > trainer.best['mAP']
    if du.is_dist():
        better = du.all_gather_object(better)[0]
    if not better:
        return
    path = best_file(trainer.cfg)
    with du.fail_together():  # rank 0 writes: a failure there stops every rank
        digest = None
        if du.is_main_process():
            save_weights(trainer.model, path)
            digest = file_digest(path)
        trainer.best = {'epoch': epoch, 'mAP': float(mAP), 'sha256': digest}
        trainer.save_state(epoch)
    trainer.logger.info('best checkpoint so far: epoch %d, validation mAP %.1f%%, saved as %s '
                        '(and the training state)', epoch, 100 * mAP, path)


def checked_record(trainer, record):
    """The best record of a training state to resume, if the best file still holds its
    weights; else None, with a warning (a run stopped between writing a new best file and
    its state leaves a file the state does not describe)."""
    path = best_file(trainer.cfg)
    holds = record is None or (du.is_main_process() and os.path.exists(path)
                               and file_digest(path) == record.get('sha256'))
    if du.is_dist():
        holds = du.all_gather_object(holds)[0]  # rank 0 read the file: its answer counts
    if holds:
        return record
    trainer.logger.warning('%s does not hold the weights of the best epoch the training state '
                           'records (epoch %d): the record starts again from the next '
                           'evaluation', path, record['epoch'])
    return None


def test_at_end(trainer, last_epoch):
    """Score the test sets with the last weights, then with the best checkpoint's (unless the
    last epoch is the best: its figures then stand for both); the curves go in at the last
    epoch and iteration."""
    test = 'test split, {} checkpoint (epoch {}{})'
    _, curves = evaluate_sets(trainer.cfg, trainer.model, trainer.data, trainer.test_evaluator,
                              trainer.runtime, heading=test.format('last', last_epoch, ''),
                              prefix='test/last')
    curves['test/last/epoch'] = last_epoch
    best = trainer.best
    if best is None:
        trainer.logger.info('no best checkpoint: no validation mAP was recorded')
    elif best['epoch'] == last_epoch:
        trainer.logger.info('the best checkpoint is the last one (epoch %d): its test results '
                            'are those above', last_epoch)
        curves.update({'test/best/' + name[len('test/last/'):]: value
                       for name, value in curves.items()})
    else:
        net = trainer.net
        last_weights = {k: v.detach().to('cpu', copy=True) for k, v in net.state_dict().items()}
        if du.is_dist():  # rank 0 wrote the best file; every rank reads it
            torch.distributed.barrier()
        with du.fail_together():
            net.load_state_dict(torch.load(best_file(trainer.cfg), map_location='cpu',
                                           weights_only=True))
        heading = test.format('best', best['epoch'], f', validation mAP {100 * best["mAP"]:.1f}%')
        _, best_curves = evaluate_sets(trainer.cfg, trainer.model, trainer.data,
                                       trainer.test_evaluator, trainer.runtime,
                                       heading=heading, prefix='test/best')
        curves.update(best_curves)
        curves['test/best/epoch'] = best['epoch']
        net.load_state_dict(last_weights)
    trainer.add_curves(last_epoch, curves)
