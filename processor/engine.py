"""The epoch loop every method shares.

A method subclasses `Trainer` and writes only what differs: `prepare_epoch` (feature cache,
text features, centroid memory), `batches` (what one epoch iterates) and `train_step` (the
loss). LR stepping, mixed precision, logging, curves (utils.training_log), NaN checks,
evaluation, checkpoints and resumable state are written once here. The last epoch always
evaluates and saves a checkpoint, whatever EVAL_PERIOD and CHECKPOINT_PERIOD say.

With a validation split (DATASETS.VAL_IDENTITIES: data.val_sets), evaluation during training
scores it and keeps the best checkpoint, and the test sets are scored at the end
(processor/best.py).
"""
import os
import time
import zlib

import torch
from tqdm import tqdm

from utils import distributed as du
from utils.checkpoint import (atomic_save, model_file_name, rng_state, save_weights,
                              set_rng_state, state_path, unwrap)
from utils.errors import ReIDError
from utils.logger import get_logger
from utils.meter import StepMeters, format_means
from utils.runtime import seed_everything
from utils.training_log import TrainingLog

from .best import (check_resumable, checked_record, held_out_identities, note_best,
                   test_at_end)
from .evaluation import evaluate_sets

_NO_STEP = float(2 ** 24)  # "no step yet" in note_finite (exact in float32, above any step)


class Trainer:
    stage = 'train'          # names the state file and log lines
    weights_pattern = '{name}_{epoch}.pth'
    loss_fn = None           # a loss module with its own state (center loss): saved with the rest

    def __init__(self, cfg, solver_cfg, model, optimizer, scheduler, runtime, data,
                 evaluator=None, center_optimizer=None, test_evaluator=None):
        self.cfg, self.solver, self.runtime, self.data = cfg, solver_cfg, runtime, data
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.center_optimizer = center_optimizer
        self.evaluator = evaluator  # one per set of the split scored during training
        # the identities the validation split holds out: a resumed run must hold out the same
        self.held_out = held_out_identities(data)
        # With a validation split, training scores it; the test sets wait for the end.
        self.validating = evaluator is not None and self.held_out is not None
        self.test_evaluator = test_evaluator
        self.best = None  # {'epoch', 'mAP', 'sha256'} of the best validation mAP so far
        self._state_epoch = None  # the epoch whose training state is saved already
        self.device = runtime.device
        self.amp_dtype = runtime.amp_dtype
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)
        self.logger = get_logger()
        self.epoch = 0
        self.iteration = 0
        if self.validating and solver_cfg.EVAL_PERIOD >= solver_cfg.MAX_EPOCHS > 1:
            self.logger.warning(
                'DATASETS.VAL_IDENTITIES: the validation split is scored only at the last epoch '
                '(EVAL_PERIOD %d, MAX_EPOCHS %d), so the best checkpoint is the last one; a '
                'lower EVAL_PERIOD chooses among epochs', solver_cfg.EVAL_PERIOD,
                solver_cfg.MAX_EPOCHS)

    @property
    def net(self):
        return unwrap(self.model)

    # ----- what a method writes ---------------------------------------------------------
    def prepare_epoch(self, epoch):
        """Work done before the epoch's first step (no-op by default)."""

    def batches(self, epoch):
        raise NotImplementedError

    def train_step(self, batch):
        """Return (loss, {name: scalar tensor}) for one batch; the loop does backward and step.
        Return tensors, not floats: reading a value waits for the GPU."""
        raise NotImplementedError

    def after_step(self, batch):
        """Work after the optimizer step (e.g. memory update)."""

    def extra_state(self):
        """Method state saved for inspection; what resuming needs is rebuilt in prepare_epoch."""
        return {}

    def step_scheduler(self, epoch):
        self.scheduler.step(epoch)

    # ----- the loop ------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def to_device(self, batch):
        return [t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t for t in batch]

    def sie_labels(self, camids, viewids):
        cam = camids if self.cfg.MODEL.SIE_CAMERA else None
        view = viewids if self.cfg.MODEL.SIE_VIEW else None
        return cam, view

    def run(self, start_epoch=1):
        with du.fail_together():  # rank 0 opens (and may rewrite) metrics.csv
            self.curves = TrainingLog(self.cfg, self.stage,
                                      self.iteration if start_epoch > 1 else 0)
        try:
            self._run(start_epoch)
        finally:
            self.curves.close()

    def _run(self, start_epoch):
        max_epochs = self.solver.MAX_EPOCHS
        if start_epoch == 1 and self.evaluator is not None and self.cfg.TEST.EVAL_BEFORE_TRAIN:
            self.logger.info('Before training:')
            self.evaluate(0)
        for epoch in range(start_epoch, max_epochs + 1):
            self.epoch = epoch
            self.step_scheduler(epoch)
            self.prepare_epoch(epoch)
            # Each epoch's training draws from generators seeded by (seed, stage, epoch, rank),
            # so a run resumed at an epoch boundary repeats exactly what the uninterrupted run
            # did. Seeded after prepare_epoch, whose work (and use of the generators, e.g. by
            # a DataLoader) depends on what is cached already.
            seed_everything(self.cfg.SOLVER.SEED + 1000 * epoch + 100003 * self.runtime.rank
                            + zlib.crc32(self.stage.encode()) % 1000)
            self.train_epoch(epoch)
            self.end_epoch(epoch)
        if self.validating:
            test_at_end(self, max_epochs)

    def samples_in(self, batch):
        """Images one step trains on, over all ranks (for the samples/s log)."""
        return batch[0].shape[0] * self.runtime.world_size

    def train_epoch(self, epoch):
        """One pass of the step loop. The GPU is never waited for inside it, except every
        LOG_PERIOD steps and at the end, where the meters are read and the loss is checked."""
        self.model.train()
        meters = StepMeters()
        self._first_bad = None
        log_period = self.solver.LOG_PERIOD
        start, seen = time.perf_counter(), 0
        batches = self.batches(epoch)
        bar = tqdm(batches, desc=f'{self.stage} epoch {epoch}', leave=False,
                   disable=not du.is_main_process())
        n_iter = 0
        for n_iter, batch in enumerate(bar, 1):
            batch = self.to_device(batch)
            self.optimizer.zero_grad(set_to_none=True)
            if self.center_optimizer is not None:
                self.center_optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss, parts = self.train_step(batch)
            self.note_finite(loss, n_iter)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            if self.center_optimizer is not None:
                self.step_center_optimizer()
            self.scaler.update()
            self.after_step(batch)
            self.iteration += 1
            seen += self.samples_in(batch)
            meters.update({'loss': loss, **parts}, batch[0].shape[0])
            if n_iter % log_period == 0:
                self.check_finite(epoch)
                self.log_progress(epoch, n_iter, meters)
        self.check_finite(epoch)
        means = meters.means()
        if n_iter % log_period:  # the epoch's averages reach the curves at least once
            self.add_curves(epoch, self.curve_values(means))
        elapsed = time.perf_counter() - start
        self.logger.info('%s epoch %d done in %.1fs (%.1f samples/s): %s', self.stage, epoch,
                         elapsed, seen / max(elapsed, 1e-9), format_means(means))

    def step_center_optimizer(self):
        """The centers live outside the DDP model: average their gradients over the ranks
        here. As upstream, the loss weight is undone so that they move at CENTER_LR."""
        self.loss_fn.unweight_center_grads()
        du.average_gradients(self.loss_fn.center.parameters())
        self.scaler.step(self.center_optimizer)

    def note_finite(self, loss, n_iter):
        """Remember, on the device, the first step of the epoch whose loss is nan or inf."""
        loss = loss.detach().float()
        if self._first_bad is None:
            self._first_bad = (torch.full((), _NO_STEP, device=loss.device), loss)
        step, value = self._first_bad
        bad = ~torch.isfinite(loss) & (step == _NO_STEP)
        self._first_bad = (torch.where(bad, float(n_iter), step), torch.where(bad, loss, value))

    def check_finite(self, epoch):
        """Stop every rank when any rank met a non-finite loss (before anything is saved)."""
        if self._first_bad is None:
            return
        step = self._first_bad[0].clone()
        if du.is_dist():
            torch.distributed.all_reduce(step, op=torch.distributed.ReduceOp.MIN)
        step = int(step.item())
        if step == _NO_STEP:
            return
        mine, value = (t.item() for t in self._first_bad)
        value = value if mine == step else None
        if du.is_dist():
            value = 'not finite' + ('' if value is None else f' (here {value})')
        raise ReIDError(f'{self.stage}: the loss is {value} at epoch {epoch}, iteration '
                        f'{step}; training stopped ({self.kept_message()}). A lower '
                        'learning rate or SOLVER.AMP off may help')

    def kept_message(self):
        last = self.last_state_file()
        return f'the last good checkpoint is {last}' if last else 'no checkpoint was written yet'

    def base_lr(self):
        """The learning rate now of the parameters set to BASE_LR (the heads): other groups
        carry factors (bias LR factor, layer decay) and may come first; group 0's when no
        group started at BASE_LR."""
        groups = self.optimizer.param_groups
        return next((g['lr'] for g in groups if g.get('initial_lr') == self.solver.BASE_LR),
                    groups[0]['lr'])

    def curve_values(self, means):
        return {**{f'train/{name}': value for name, value in means.items()},
                'train/lr': self.base_lr()}

    def log_progress(self, epoch, n_iter, meters):
        means = meters.means()
        lr = self.base_lr()
        self.logger.info('%s epoch[%d] iteration[%d] %s, base lr %.2e', self.stage, epoch, n_iter,
                         format_means(means), lr)
        self.add_curves(epoch, self.curve_values(means))

    def add_curves(self, epoch, values):
        with du.fail_together():  # rank 0 writes: a failure there stops every rank
            self.curves.add(epoch, self.iteration, values)

    def evaluate(self, epoch):
        """Score every set of the split evaluated during training (self.evaluator: one
        evaluator per set): the validation split when there is one, else the test sets;
        returns the first one's result. A validation score may make this epoch the best."""
        split, heading = ('validation', 'validation split') if self.validating else ('test', None)
        result, curves = evaluate_sets(self.cfg, self.model, self.data, self.evaluator,
                                       self.runtime, split, heading)
        self.add_curves(epoch, curves)
        if self.validating and epoch > 0:  # epoch 0 (EVAL_BEFORE_TRAIN) has no checkpoint
            note_best(self, epoch, result.mAP)
        return result

    def end_epoch(self, epoch):
        last = epoch == self.solver.MAX_EPOCHS
        if self.evaluator is not None and (epoch % self.solver.EVAL_PERIOD == 0 or last):
            self.evaluate(epoch)
        if epoch % self.solver.CHECKPOINT_PERIOD == 0 or last:
            with du.fail_together():  # rank 0 writes: a failure there stops every rank
                self.save_checkpoint(epoch)

    # ----- checkpoints -------------------------------------------------------------------
    def last_state_file(self):
        path = state_path(self.cfg.OUTPUT_DIR, model_file_name(self.cfg), self.stage)
        return path if os.path.exists(path) else None

    def save_checkpoint(self, epoch):
        # A finite loss can still come with inf gradients; never save what they did.
        bad = [n for n, p in self.net.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise ReIDError(f'{self.stage}: after epoch {epoch} the weights {", ".join(bad[:3])} '
                            f'are not finite; not saved, training stopped ({self.kept_message()})')
        if not du.is_main_process():
            return
        name = model_file_name(self.cfg)
        weights = os.path.join(self.cfg.OUTPUT_DIR,
                               self.weights_pattern.format(name=name, epoch=epoch))
        save_weights(self.model, weights)
        if self._state_epoch != epoch:
            self.save_state(epoch)
        self.logger.info('saved %s and the training state', weights)

    def save_state(self, epoch):
        """The training state after `epoch` (rank 0), which --resume continues from."""
        if not du.is_main_process():
            return
        state = {
            'model': self.net.state_dict(), 'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(), 'scaler': self.scaler.state_dict(),
            'center_optimizer': self.center_optimizer and self.center_optimizer.state_dict(),
            'loss': None if self.loss_fn is None else self.loss_fn.state_dict(),
            'epoch': epoch, 'iteration': self.iteration, 'stage': self.stage,
            'rng': rng_state(), 'extra': self.extra_state(), 'best': self.best,
            'held_out': self.held_out,
        }
        atomic_save(state, state_path(self.cfg.OUTPUT_DIR, model_file_name(self.cfg), self.stage))
        self._state_epoch = epoch

    def load_state(self, state):
        """Continue after the epoch recorded in a training-state dict; returns the next epoch."""
        check_resumable(state, self.net, self.held_out, (self.stage,))
        self.net.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.load_scaler(state.get('scaler') or {})
        if self.center_optimizer is not None and state.get('center_optimizer'):
            self.center_optimizer.load_state_dict(state['center_optimizer'])
        if self.loss_fn is not None and state.get('loss'):
            self.loss_fn.load_state_dict(state['loss'])
        self.iteration = state['iteration']
        self.best = checked_record(self, state.get('best'))  # older states hold none
        set_rng_state(state['rng'])
        self.logger.info('resumed %s after epoch %d', self.stage, state['epoch'])
        return state['epoch'] + 1

    def load_scaler(self, saved):
        """The GradScaler's state, when both runs scale (fp16). A run saved in another
        precision has none: an fp16 resume then starts a fresh scale."""
        if self.scaler.is_enabled() and saved:
            self.scaler.load_state_dict(saved)
        elif self.scaler.is_enabled():
            self.logger.info('the training state has no fp16 GradScaler state (it was saved '
                             'in another precision): starting a fresh loss scale')
