"""CLIP-ReID end to end on the CPU: both stages on generated Market1501-layout data with a
tiny random CLIP, from configs/person/vit_clipreid.yml (and cnn_clipreid.yml for ResNet).

The ViT run (one per module, in-process) is watched by wrapping the stage-1 trainer: its
optimizer and each epoch's learning rate are recorded, and the weights are copied when
stage 1 ends, so the tests can check what each stage changed.
"""
import math
import os
from types import SimpleNamespace

import pytest
import torch

from _e2e_helpers import (build, changed_keys, clone_state, demo_root, epoch_losses, evaluate,
                          load_cfg, logged_results, read_log, run_script, small_opts, tiny_clip,
                          train)
from processor.clipreid import PromptTrainer

E1, E2 = 10, 30  # stage-1 and stage-2 epochs
# Measured over data/training seeds 0-3 (0 is this test's): untrained mAP 0.036-0.142,
# trained 0.46-0.69, gains 0.43-0.56, at least 4.8 times the untrained mAP; the last
# stage-1 epoch's mean loss was 0.57-0.68 of the first's.
MARGIN = 0.2
TRAIN_OPTS = [
    'MODEL.NAME', 'tiny-ViT', 'TEST.EVAL_BEFORE_TRAIN', 'False',
    'INPUT.RE_PROB', 0.0,  # random erasing of 64x32 pictures slows the tiny model down a lot
    'SOLVER.STAGE1.IMS_PER_BATCH', 32, 'SOLVER.STAGE1.MAX_EPOCHS', E1,
    'SOLVER.STAGE1.BASE_LR', 0.005, 'SOLVER.STAGE1.WARMUP_EPOCHS', 2,
    'SOLVER.STAGE1.CHECKPOINT_PERIOD', E1, 'SOLVER.STAGE1.LOG_PERIOD', 100,
    'SOLVER.STAGE2.IMS_PER_BATCH', 32, 'SOLVER.STAGE2.MAX_EPOCHS', E2,
    'SOLVER.STAGE2.BASE_LR', 0.0003, 'SOLVER.STAGE2.WARMUP_ITERS', 1,
    'SOLVER.STAGE2.STEPS', f'[{E2 + 1}]', 'SOLVER.STAGE2.EVAL_PERIOD', E2,
    'SOLVER.STAGE2.CHECKPOINT_PERIOD', E2, 'SOLVER.STAGE2.LOG_PERIOD', 100]


@pytest.fixture(scope='module')
def vit(tmp_path_factory):
    root, clip = demo_root(tmp_path_factory), tiny_clip(tmp_path_factory, 'vit')
    out = tmp_path_factory.mktemp('clipreid_vit')
    cfg = load_cfg('person/vit_clipreid.yml', root, clip, out, *TRAIN_OPTS)
    runtime, data, model = build(cfg)
    seen = SimpleNamespace(init=clone_state(model), lrs=[])
    before = evaluate(cfg, runtime, data, model)
    run, train_epoch = PromptTrainer.run, PromptTrainer.train_epoch

    def watched_run(self, start_epoch=1):
        seen.optimizer = self.optimizer
        run(self, start_epoch)
        seen.stage1 = clone_state(self.net)

    def watched_epoch(self, epoch):
        seen.lrs.append(self.optimizer.param_groups[0]['lr'])
        train_epoch(self, epoch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PromptTrainer, 'run', watched_run)
        patch.setattr(PromptTrainer, 'train_epoch', watched_epoch)
        train(cfg, runtime, data, model)
    after = evaluate(cfg, runtime, data, model)
    return SimpleNamespace(cfg=cfg, model=model, seen=seen, before=before, after=after,
                           out=str(out), root=root, clip=clip, log=read_log(out))


def test_stage1_loss_falls(vit):
    losses = epoch_losses(vit.log, 'stage1')
    assert len(losses) == E1
    assert 0 < losses[-1] < 0.8 * losses[0], losses  # SupCon terms are positive


def test_stage1_is_adam_with_warmup_cosine_from_the_stage1_keys(vit):
    s1 = vit.cfg.SOLVER.STAGE1
    assert type(vit.seen.optimizer) is torch.optim.Adam
    params = [p for group in vit.seen.optimizer.param_groups for p in group['params']]
    assert len(params) == 1 and params[0] is vit.model.prompt_learner.cls_ctx

    def lr(t):  # timm's CosineLRScheduler stepped with the 1-based epoch, as upstream
        if t < s1.WARMUP_EPOCHS:
            return s1.WARMUP_LR_INIT + t * (s1.BASE_LR - s1.WARMUP_LR_INIT) / s1.WARMUP_EPOCHS
        return s1.LR_MIN + (s1.BASE_LR - s1.LR_MIN) * (1 + math.cos(math.pi * t / E1)) / 2

    assert vit.seen.lrs == pytest.approx([lr(t) for t in range(1, E1 + 1)], rel=1e-9)
    assert (s1.WARMUP_LR_INIT, s1.LR_MIN) == (0.00001, 0.000001)  # from the YAML file


def test_stage1_changes_only_the_prompt_context(vit):
    assert changed_keys(vit.seen.init, vit.seen.stage1) == {'prompt_learner.cls_ctx'}


def test_stage2_leaves_text_encoder_and_prompts_unchanged(vit):
    changed = changed_keys(vit.seen.stage1, clone_state(vit.model))
    assert not {k for k in changed if k.startswith(('prompt_learner.', 'text_encoder.'))}
    image = {n for n, _ in vit.model.named_parameters() if n.startswith('image_encoder.')}
    assert image and image <= changed  # every image-encoder weight was trained
    assert {'classifier.weight', 'classifier_proj.weight', 'bottleneck.weight'} <= changed


def test_trained_map_far_above_untrained(vit):
    before, after = vit.before.mAP, vit.after.mAP
    assert after >= before + MARGIN and after >= 2 * before, (before, after)
    assert vit.after.summary()['Rank-1'] > vit.before.summary()['Rank-1']


def test_test_script_reproduces_the_final_validation(vit):
    """The last validation of training, test_clipreid.py on the saved weights and an
    in-process evaluation agree (the log rounds to 0.1%)."""
    final = logged_results(vit.log)[-1]
    expected = vit.after.summary()
    assert list(final) == ['mAP', 'Rank-1', 'Rank-5', 'Rank-10']
    weights = os.path.join(vit.out, f'tiny-ViT_{E2}.pth')
    opts = small_opts(vit.root, vit.clip, os.path.join(vit.out, 'test'), 'TEST.WEIGHT', weights)
    scripted = logged_results(run_script('test_clipreid.py', 'person/vit_clipreid.yml', opts))
    assert len(scripted) == 1
    for name, value in expected.items():
        assert final[name] == pytest.approx(value, abs=6e-4)
        assert scripted[0][name] == pytest.approx(value, abs=6e-4)


# ResNet, 2 stage-1 and 6 stage-2 epochs, seeds 0-3: mAP after stage 1 0.036-0.160, after
# stage 2 0.161-0.400, gains 0.105-0.240, at least 2.5 times.
RN_MARGIN = 0.08


def test_resnet_clipreid_trains_and_evaluates(tmp_path_factory):
    """train_clipreid.py with configs/person/cnn_clipreid.yml on a tiny ResNet CLIP."""
    root, clip = demo_root(tmp_path_factory), tiny_clip(tmp_path_factory, 'rn')
    out = tmp_path_factory.mktemp('clipreid_rn')
    opts = small_opts(root, clip, out, 'TEST.EVAL_BEFORE_TRAIN', 'True',
                      'SOLVER.STAGE1.IMS_PER_BATCH', 32, 'SOLVER.STAGE1.MAX_EPOCHS', 2,
                      'SOLVER.STAGE1.WARMUP_EPOCHS', 1, 'SOLVER.STAGE1.CHECKPOINT_PERIOD', 2,
                      'SOLVER.STAGE2.IMS_PER_BATCH', 32, 'SOLVER.STAGE2.MAX_EPOCHS', 6,
                      'SOLVER.STAGE2.WARMUP_ITERS', 1, 'SOLVER.STAGE2.STEPS', '[7]',
                      'SOLVER.STAGE2.EVAL_PERIOD', 6, 'SOLVER.STAGE2.CHECKPOINT_PERIOD', 6)
    log = run_script('train_clipreid.py', 'person/cnn_clipreid.yml', opts)
    s1, s2 = epoch_losses(log, 'stage1'), epoch_losses(log, 'stage2')
    assert len(s1) == 2 and len(s2) == 6 and all(x > 0 for x in s1 + s2) and s2[-1] < s2[0]
    before, after = logged_results(log)  # before stage 2, after it
    assert list(before) == list(after) == ['mAP', 'Rank-1', 'Rank-5', 'Rank-10']
    assert after['mAP'] >= before['mAP'] + RN_MARGIN and after['mAP'] >= 2 * before['mAP']
    stage1 = torch.load(out / 'RN50_stage1_2.pth', weights_only=True)
    final = torch.load(out / 'RN50_6.pth', weights_only=True)
    changed = changed_keys(stage1, final)
    assert {'image_encoder.conv1.weight', 'image_encoder.attnpool.c_proj.weight'} <= changed
    assert not {k for k in changed if k.startswith(('prompt_learner.', 'text_encoder.'))}
