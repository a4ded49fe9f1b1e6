"""The best-by-validation checkpoint of a training run, and the test split scored at its end.

With a validation split (DATASETS.VAL_IDENTITIES: data.val_sets) every evaluation during
training scores it. <MODEL.NAME>_best.pth holds the weights of the epoch with the highest
validation mAP (strictly higher: a tie leaves the earlier epoch); the trainer's `best`
record ({'epoch', 'mAP'}) is part of its training state, so a resumed run keeps it. After
the last epoch the test sets are scored once with the last weights and once with the best
checkpoint's (curves test/last/* and test/best/*); the model then holds the last weights
again, as the last checkpoint and the training state do.
"""
import os

import torch

from utils import distributed as du
from utils.checkpoint import model_file_name, save_weights

from .evaluation import evaluate_sets


def best_file(cfg):
    return os.path.join(cfg.OUTPUT_DIR, f'{model_file_name(cfg)}_best.pth')


def note_best(trainer, epoch, mAP):
    """Keep this epoch's weights as the best when its validation mAP beats the record."""
    if trainer.best is not None and not mAP > trainer.best['mAP']:
        return
    trainer.best = {'epoch': epoch, 'mAP': float(mAP)}
    path = best_file(trainer.cfg)
    with du.fail_together():  # rank 0 writes: a failure there stops every rank
        if du.is_main_process():
            save_weights(trainer.model, path)
    trainer.logger.info('best checkpoint so far: epoch %d, validation mAP %.1f%%, saved as %s',
                        epoch, 100 * mAP, path)


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
