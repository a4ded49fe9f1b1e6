"""Each method's own parts, pinned by exact one- or two-step checks on fixed batches.

The end-to-end tests show that training learns; these show that every part the methods are
made of does what the papers and the upstream code say: PCL's memory update and ID term,
CLIP-ReID's two SupCon directions in stage 1, stage 2's text features and image-to-text
term, the baseline's triplet term. The references are written here from the formulas.
"""
from operator import attrgetter

import pytest
import torch
import torch.nn.functional as F

from _e2e_helpers import build, demo_root, load_cfg, tiny_clip
from loss import make_loss
from processor.baseline import BaselineTrainer
from processor.clipreid import ImageTrainer, PromptTrainer
from processor.pcl import PCLTrainer
from solver import make_optimizer, make_scheduler

BATCH = ['SOLVER.IMS_PER_BATCH', 16, 'SOLVER.STAGE1.IMS_PER_BATCH', 16,
         'SOLVER.STAGE2.IMS_PER_BATCH', 16, 'DATALOADER.NUM_INSTANCE', 4,
         'INPUT.PROB', 0, 'INPUT.RE_PROB', 0, 'INPUT.PADDING', 0, 'MODEL.NAME', 'tiny-ViT']


def _setup(tmp_path_factory, config, *opts):
    root, clip = demo_root(tmp_path_factory), tiny_clip(tmp_path_factory, 'vit')
    cfg = load_cfg(config, root, clip, tmp_path_factory.mktemp('parts'), *BATCH, *opts)
    return (cfg, *build(cfg, seed=0))


def _trainer(cls, cfg, solver, runtime, data, model, **kwargs):
    optimizer, _ = make_optimizer(solver, model)
    scheduler = make_scheduler(solver, optimizer, 'cosine' if cls is PromptTrainer
                               else 'multistep')
    trainer = cls(cfg, solver, model, optimizer, scheduler, runtime, data, **kwargs)
    trainer.curves = type('NoCurves', (), {'add': lambda *args: None})()
    return trainer


def _first_batch(trainer):
    trainer.model.train()
    return trainer.to_device(next(iter(trainer.batches(1))))


def _smoothed_ce(logits, target, eps=0.1):
    log_p = F.log_softmax(logits, dim=1)
    k = logits.shape[1]
    return -((1 - eps) * log_p.gather(1, target[:, None]).squeeze(1) + eps / k * log_p.sum(1)).mean()


# -------------------------------------------------------------------------------- PCL
def _pcl(tmp_path_factory, *opts):
    cfg, runtime, data, model = _setup(tmp_path_factory, 'pcl/market1501.yml', *opts)
    trainer = _trainer(PCLTrainer, cfg, cfg.SOLVER, runtime, data, model)
    trainer.prepare_epoch(1)
    return trainer


def _hard_update(memory, x, target, momentum):
    """CM_Hard: per identity, its batch feature least similar to the centroid."""
    out = memory.clone()
    for label in target.unique().tolist():
        rows = x[target == label]
        chosen = rows[(rows @ memory[label]).argmin()]
        out[label] = F.normalize(momentum * memory[label] + (1 - momentum) * chosen, dim=0)
    return out


def _sequential_update(memory, x, target, momentum):
    """CM: every sample in batch order."""
    out = memory.clone()
    for row, label in zip(x, target.tolist()):
        out[label] = F.normalize(momentum * out[label] + (1 - momentum) * row, dim=0)
    return out


@pytest.mark.parametrize('mode,update', [('hard', _hard_update),
                                         ('sequential', _sequential_update)])
def test_pcl_memory_moves_by_the_configured_rule_and_momentum(tmp_path_factory, mode, update):
    trainer = _pcl(tmp_path_factory, 'MODEL.MEMORY_UPDATE', mode, 'MODEL.MEMORY_MOMENTUM', 0.5)
    before = trainer.memory.features.clone()
    batch = _first_batch(trainer)
    trainer.train_step(batch)
    with torch.no_grad():
        x = F.normalize(trainer.model(batch[0])['feats'][0], dim=1)
    trainer.after_step(batch)
    expected = update(before, x, batch[1], 0.5)
    assert torch.allclose(trainer.memory.features, expected, atol=1e-6)
    absent = torch.ones(len(before), dtype=torch.bool)
    absent[batch[1]] = False
    assert torch.equal(trainer.memory.features[absent], before[absent])


def test_pcl_memory_moves_during_an_epoch(tmp_path_factory):
    trainer = _pcl(tmp_path_factory, 'SOLVER.ITERS', 2)
    before = trainer.memory.features.clone()
    trainer.train_epoch(1)
    moved = (trainer.memory.features - before).abs().sum(1) > 0
    assert 0 < moved.sum() <= 2 * 4  # the identities of two batches of 4 identities


@pytest.mark.parametrize('smooth', ['on', 'off'])
def test_pcl_loss_is_weighted_memory_plus_weighted_id_term(tmp_path_factory, smooth):
    """loss = PCL_LOSS_WEIGHT * memory CE + ID_LOSS_WEIGHT * (smoothed) CE; the classifier's
    gradient comes from the ID term alone, scaled by its weight."""
    grads = {}
    for w_id in (0.25, 0.75):
        trainer = _pcl(tmp_path_factory, 'MODEL.ID_LOSS_WEIGHT', w_id, 'MODEL.PCL_LOSS_WEIGHT',
                       0.5, 'MODEL.IF_LABELSMOOTH', smooth)
        batch = _first_batch(trainer)
        images, target = batch[0], batch[1]
        out = trainer.model(images)
        feats, logits = out['feats'][0], out['logits'][0]
        memory_logits = F.normalize(feats, dim=1) @ trainer.memory.features.t() / 0.05
        id_term = _smoothed_ce(logits, target) if smooth == 'on' else F.cross_entropy(logits,
                                                                                      target)
        expected = 0.5 * F.cross_entropy(memory_logits, target) + w_id * id_term
        loss, parts = trainer.train_step(batch)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        assert parts['id'].item() == pytest.approx(id_term.item(), rel=1e-5)
        trainer.model.zero_grad()
        loss.backward()
        grads[w_id] = trainer.net.classifier.weight.grad.clone()
        reference = torch.autograd.grad(w_id * id_term, trainer.net.classifier.weight)[0]
        assert torch.allclose(grads[w_id], reference, atol=1e-7)
    assert torch.allclose(grads[0.75], 3 * grads[0.25], atol=1e-7)


# ------------------------------------------------------------------------- CLIP-ReID
def _supcon(a, b, labels):
    """-mean_i mean_{j: y_j = y_i} log softmax_j(a_i . b_j)."""
    log_p = F.log_softmax(a @ b.t(), dim=1)
    same = (labels[:, None] == labels[None, :]).float()
    return -((log_p * same).sum(1) / same.sum(1)).mean()


def test_stage1_trains_both_supcon_directions(tmp_path_factory):
    cfg, runtime, data, model = _setup(tmp_path_factory, 'person/vit_clipreid.yml',
                                       'SOLVER.STAGE1.BASE_LR', 0.001,
                                       'SOLVER.STAGE1.WARMUP_EPOCHS', 0)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith('prompt_learner.'))
    trainer = _trainer(PromptTrainer, cfg, cfg.SOLVER.STAGE1, runtime, data, model)
    trainer.step_scheduler(1)
    trainer.prepare_epoch(1)
    batch = _first_batch(trainer)
    index = batch[0]
    target, image = trainer.labels[index], trainer.image_feats[index]
    history = []
    for _ in range(4):
        loss, parts = trainer.train_step(batch)
        with torch.no_grad():
            text = trainer.net.encode_text(target)
            i2t, t2i = _supcon(image, text, target), _supcon(text, image, target)
        assert parts['i2t'].item() == pytest.approx(i2t.item(), rel=1e-5)
        assert parts['t2i'].item() == pytest.approx(t2i.item(), rel=1e-5)
        assert loss.item() == pytest.approx((i2t + t2i).item(), rel=1e-5)
        history.append((i2t.item(), t2i.item()))
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    assert history[-1][0] < history[0][0] and history[-1][1] < history[0][1], history


def test_stage2_text_features_come_from_the_current_prompts(tmp_path_factory):
    cfg, runtime, data, model = _setup(tmp_path_factory, 'person/vit_clipreid.yml')
    untrained = model.all_text_features()
    with torch.no_grad():  # as if stage 1 had learned them
        model.prompt_learner.cls_ctx.add_(torch.randn_like(model.prompt_learner.cls_ctx))
    loss_fn = make_loss(cfg, data.num_classes)
    trainer = _trainer(ImageTrainer, cfg, cfg.SOLVER.STAGE2, runtime, data, model,
                       loss_fn=loss_fn)
    trainer.prepare_epoch(1)
    learned = model.all_text_features()
    assert torch.allclose(trainer.text_feats, learned, atol=1e-5)
    assert not torch.allclose(trainer.text_feats, untrained, atol=1e-2)


def _step_per_weight(tmp_path_factory, config, key, weights, cls, solver, param):
    """One train step on the first batch with `key` set to each weight: ({weight: (loss,
    gradient of param(trainer), loss parts)}, the last trainer, its batch)."""
    results = {}
    for weight in weights:
        cfg, runtime, data, model = _setup(tmp_path_factory, config, key, weight)
        trainer = _trainer(cls, cfg, solver(cfg), runtime, data, model,
                           loss_fn=make_loss(cfg, data.num_classes))
        trainer.prepare_epoch(1)
        batch = _first_batch(trainer)
        loss, parts = trainer.train_step(batch)
        results[weight] = (loss, torch.autograd.grad(loss, param(trainer))[0], parts)
    return results, trainer, batch


def test_stage2_image_to_text_term_reaches_the_gradient(tmp_path_factory):
    results, trainer, batch = _step_per_weight(
        tmp_path_factory, 'person/vit_clipreid.yml', 'MODEL.I2T_LOSS_WEIGHT', (0.0, 1.0),
        ImageTrainer, attrgetter('SOLVER.STAGE2'), attrgetter('net.image_encoder.proj'))
    proj = trainer.net.image_encoder.proj
    out = trainer.model(batch[0], label=batch[1])
    i2t = _smoothed_ce(out['image_proj'] @ trainer.text_feats.t(), batch[1])
    assert (results[1.0][0] - results[0.0][0]).item() == pytest.approx(i2t.item(), rel=1e-4)
    assert results[1.0][2]['i2t'].item() == pytest.approx(i2t.item(), rel=1e-5)
    reference = torch.autograd.grad(i2t, proj)[0]
    assert torch.allclose(results[1.0][1] - results[0.0][1], reference, atol=1e-6)
    assert reference.abs().sum() > 0


# -------------------------------------------------------------------------- baseline
def _batch_hard_triplet(feats, labels, margin=0.3):
    dist = torch.cdist(feats, feats).clamp(min=1e-6)
    same = labels[:, None] == labels[None, :]
    ap = torch.where(same, dist, torch.full_like(dist, -1)).max(1).values
    an = torch.where(same, torch.full_like(dist, float('inf')), dist).min(1).values
    return F.relu(ap - an + margin).mean()


def test_baseline_triplet_term_sums_three_features_and_reaches_the_gradient(tmp_path_factory):
    def first_fc(trainer):
        return trainer.net.image_encoder.transformer.resblocks[0].mlp.c_fc.weight

    results, trainer, batch = _step_per_weight(
        tmp_path_factory, 'person/vit_base.yml', 'MODEL.TRIPLET_LOSS_WEIGHT', (0.0, 2.0),
        BaselineTrainer, attrgetter('SOLVER'), first_fc)
    conv = first_fc(trainer)
    feats = trainer.net.image_features(batch[0])  # (intermediate, final, projected)
    triplet = sum(_batch_hard_triplet(f, batch[1]) for f in feats)
    assert (results[2.0][0] - results[0.0][0]).item() == pytest.approx(2 * triplet.item(),
                                                                        rel=1e-4)
    reference = torch.autograd.grad(2 * triplet, conv)[0]
    assert torch.allclose(results[2.0][1] - results[0.0][1], reference, atol=1e-6)
    assert reference.abs().sum() > 0
