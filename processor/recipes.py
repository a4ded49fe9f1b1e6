"""What each method builds around the shared loop: trainable parameters, DDP wrapping,
optimizer, scheduler, losses, and the order of stages."""
import torch
from torch.nn.parallel import DistributedDataParallel

from loss import make_loss
from solver import make_optimizer, make_scheduler
from utils import distributed as du
from utils.checkpoint import unwrap

from .baseline import BaselineTrainer
from .clipreid import ImageTrainer, PromptTrainer
from .evaluation import make_evaluators, split_sets
from .pcl import PCLTrainer
from .pcl_unsup import UnsupervisedPCLTrainer


def resumable_stages(cfg, method):
    """The stages whose training state `method` can continue (CLIP-ReID: either stage)."""
    if method == 'clipreid':
        return PromptTrainer.stage, ImageTrainer.stage
    if method == 'pcl':
        return (UnsupervisedPCLTrainer if cfg.MODEL.UNSUPERVISED else PCLTrainer).stage,
    return BaselineTrainer.stage,


def wrap_ddp(cfg, model, runtime):
    """DistributedDataParallel when launched by torchrun, with SyncBatchNorm if asked (CUDA
    only: setup_run refuses it on the CPU before anything runs)."""
    if not du.is_dist():
        return model
    if cfg.MODEL.SYNC_BN:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [runtime.device.index] if runtime.device.type == 'cuda' else None
    return DistributedDataParallel(model, device_ids=device_ids)


def set_trainable(model, predicate):
    for name, param in model.named_parameters():
        param.requires_grad_(predicate(name))


def _evaluator(cfg, data):
    """Evaluators of the split scored during training: the validation split when
    DATASETS.VAL_IDENTITIES holds one out, else the test sets."""
    if split_sets(data, 'validation'):
        return make_evaluators(cfg, data, 'validation')
    return make_evaluators(cfg, data)


def _test_evaluator(cfg, data):
    """With a validation split, the test sets' evaluators (scored once, at the end of
    training); None otherwise."""
    return make_evaluators(cfg, data) if split_sets(data, 'validation') else None


def train_pcl(cfg, model, data, runtime, resume_state=None):
    """Supervised PCL-CLIP, or its unsupervised variant (MODEL.UNSUPERVISED), which has no
    identities for the ID classifier: that stays as built, out of the optimizer."""
    trainer_class = PCLTrainer
    if cfg.MODEL.UNSUPERVISED:
        model.classifier.requires_grad_(False)
        trainer_class = UnsupervisedPCLTrainer
    model = wrap_ddp(cfg, model, runtime)
    optimizer, _ = make_optimizer(cfg.SOLVER, model)
    scheduler = make_scheduler(cfg.SOLVER, optimizer, 'multistep')
    trainer = trainer_class(cfg, cfg.SOLVER, model, optimizer, scheduler, runtime, data,
                            evaluator=_evaluator(cfg, data),
                            test_evaluator=_test_evaluator(cfg, data))
    trainer.run(trainer.load_state(resume_state) if resume_state else 1)
    return trainer


def train_baseline(cfg, model, data, runtime, resume_state=None):
    model = wrap_ddp(cfg, model, runtime)
    loss_fn = make_loss(cfg, data.num_classes, solver_cfg=cfg.SOLVER,
                        feat_dim=unwrap(model).in_planes_proj).to(runtime.device)
    optimizer, center_optimizer = make_optimizer(cfg.SOLVER, model, loss_fn.center)
    scheduler = make_scheduler(cfg.SOLVER, optimizer, 'multistep')
    trainer = BaselineTrainer(cfg, cfg.SOLVER, model, optimizer, scheduler, runtime, data,
                              evaluator=_evaluator(cfg, data),
                              test_evaluator=_test_evaluator(cfg, data),
                              center_optimizer=center_optimizer, loss_fn=loss_fn)
    trainer.run(trainer.load_state(resume_state) if resume_state else 1)
    return trainer


def train_clipreid(cfg, model, data, runtime, resume_state=None):
    """Stage 1 (unless resuming inside stage 2), then stage 2."""
    frozen_by_design = {n for n, p in model.named_parameters() if not p.requires_grad}
    if resume_state is None or resume_state['stage'] == PromptTrainer.stage:
        s1 = cfg.SOLVER.STAGE1
        set_trainable(model, lambda name: name.startswith('prompt_learner.'))
        optimizer, _ = make_optimizer(s1, model)
        scheduler = make_scheduler(s1, optimizer, 'cosine')
        stage1 = PromptTrainer(cfg, s1, model, optimizer, scheduler, runtime, data)
        stage1.run(stage1.load_state(resume_state) if resume_state else 1)
        resume_state = None

    s2 = cfg.SOLVER.STAGE2
    set_trainable(model, lambda name: name not in frozen_by_design
                  and not name.startswith(('prompt_learner.', 'text_encoder.')))
    ddp_model = wrap_ddp(cfg, model, runtime)
    loss_fn = make_loss(cfg, data.num_classes, solver_cfg=s2,
                        feat_dim=model.in_planes_proj).to(runtime.device)
    optimizer, center_optimizer = make_optimizer(s2, ddp_model, loss_fn.center)
    scheduler = make_scheduler(s2, optimizer, 'multistep')
    stage2 = ImageTrainer(cfg, s2, ddp_model, optimizer, scheduler, runtime, data,
                          evaluator=_evaluator(cfg, data),
                          test_evaluator=_test_evaluator(cfg, data),
                          center_optimizer=center_optimizer, loss_fn=loss_fn)
    stage2.run(stage2.load_state(resume_state) if resume_state else 1)
    return stage2
