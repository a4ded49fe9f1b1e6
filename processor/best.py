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
import os

import torch

from utils import distributed as du
from utils.checkpoint import model_file_name, save_weights

from .evaluation import evaluate_sets


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
