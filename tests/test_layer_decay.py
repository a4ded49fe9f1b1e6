"""SOLVER.LAYER_DECAY / SOLVER.STAGE2.LAYER_DECAY: layer-wise LR decay of the ViT image
encoder, with hand-computed learning rates on the tiny ViT (2 blocks)."""
import logging

import pytest
import torch.nn as nn

from _model_fixtures import build, tiny_clip_files  # noqa: F401 (fixture)
from config import load_config
from processor.recipes import set_trainable
from solver import make_optimizer, make_scheduler
from utils.errors import ReIDError

# BASE_LR 0.01, decay 0.5, BIAS_LR_FACTOR 2, 2 blocks: embeddings 0.01 * 0.5**3, block 0
# 0.01 * 0.5**2, block 1 0.01 * 0.5, after the blocks and heads 0.01; biases twice that.
SOLVER = ('BASE_LR', 0.01, 'LAYER_DECAY', 0.5, 'BIAS_LR_FACTOR', 2.0, 'WEIGHT_DECAY', 1e-4,
          'WEIGHT_DECAY_BIAS', 0.0)
EXPECTED = {  # name: (lr, weight decay)
    'image_encoder.class_embedding': (0.00125, 1e-4),
    'image_encoder.positional_embedding': (0.00125, 1e-4),
    'image_encoder.ln_pre.weight': (0.00125, 1e-4),
    'image_encoder.ln_pre.bias': (0.0025, 0.0),
    'image_encoder.transformer.resblocks.0.attn.in_proj_weight': (0.0025, 1e-4),
    'image_encoder.transformer.resblocks.0.attn.in_proj_bias': (0.005, 0.0),
    'image_encoder.transformer.resblocks.0.mlp.c_proj.weight': (0.0025, 1e-4),
    'image_encoder.transformer.resblocks.1.ln_1.weight': (0.005, 1e-4),
    'image_encoder.transformer.resblocks.1.mlp.c_fc.bias': (0.01, 0.0),
    'image_encoder.ln_post.weight': (0.01, 1e-4),
    'image_encoder.ln_post.bias': (0.02, 0.0),
    'image_encoder.proj': (0.01, 1e-4),
    'bottleneck.weight': (0.01, 1e-4),
}


def _stage_opts(node):
    out = []
    for key, value in zip(SOLVER[::2], SOLVER[1::2]):
        out += [f'{node}.{key}', value]
    return out


def _settings(optimizer, model):
    by_id = {id(p): (group['lr'], group['weight_decay'])
             for group in optimizer.param_groups for p in group['params']}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def _check(settings, expected):
    for name, (lr, wd) in expected.items():
        assert settings[name] == (pytest.approx(lr, rel=1e-12), wd), name


def test_pcl_groups_have_the_hand_computed_lrs_and_keep_the_frozen_patch_projection(
        tiny_clip_files, caplog):
    model = build(tiny_clip_files['vit', 'state_dict'], 'pcl', 5, 3, 2)
    cfg = load_config('', _stage_opts('SOLVER'))
    with caplog.at_level(logging.INFO, logger='solver'):
        optimizer, _ = make_optimizer(cfg.SOLVER, model)
    settings = _settings(optimizer, model)
    _check(settings, {**EXPECTED, 'classifier.weight': (0.01, 1e-4)})
    assert 'image_encoder.conv1.weight' not in settings  # PCL freezes it
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(settings) == sorted(trainable)
    assert ('layer-wise LR decay 0.5 over 2 blocks: block 1 LR 0.0025, block 2 LR 0.005, '
            'embeddings 0.00125, heads 0.01') in caplog.text


def test_clipreid_stage2_reads_its_stage_key_with_large_fc_lr_and_sie(tiny_clip_files):
    opts = _stage_opts('SOLVER.STAGE2') + ['SOLVER.STAGE2.LARGE_FC_LR', True,
                                            'MODEL.SIE_CAMERA', True]
    model = build(tiny_clip_files['vit', 'state_dict'], 'clipreid', 5, 3, 2, *opts)
    set_trainable(model, lambda n: not n.startswith(('prompt_learner.', 'text_encoder.')))
    cfg = load_config('', opts)
    assert cfg.SOLVER.LAYER_DECAY == 1.0  # the flat key is not stage 2's
    optimizer, _ = make_optimizer(cfg.SOLVER.STAGE2, model)
    settings = _settings(optimizer, model)
    _check(settings, {**EXPECTED, 'image_encoder.conv1.weight': (0.00125, 1e-4),
                      'classifier.weight': (0.02, 1e-4), 'classifier_proj.weight': (0.02, 1e-4),
                      'cv_embed': (0.01, 1e-4)})
    assert not any(n.startswith('text_encoder.') for n in settings)


def test_baseline_and_a_ddp_style_wrapper(tiny_clip_files):
    model = build(tiny_clip_files['vit', 'state_dict'], 'baseline', 5, 3, 2)
    wrapper = nn.Module()
    wrapper.module = model  # as DistributedDataParallel holds it
    cfg = load_config('', _stage_opts('SOLVER') + ['SOLVER.WARMUP_ITERS', 10])
    optimizer, _ = make_optimizer(cfg.SOLVER, wrapper)
    _check(_settings(optimizer, model), {**EXPECTED, 'classifier_proj.weight': (0.01, 1e-4),
                                         'image_encoder.conv1.weight': (0.00125, 1e-4)})
    scheduler = make_scheduler(cfg.SOLVER, optimizer, 'multistep')
    scheduler.step(45)  # warmup over, one milestone passed: every group x 0.1, ratios kept
    _check(_settings(optimizer, model), {'image_encoder.class_embedding': (0.000125, 1e-4),
                                         'image_encoder.proj': (0.001, 1e-4)})


def test_decay_one_is_todays_optimizer(tiny_clip_files):
    model = build(tiny_clip_files['vit', 'state_dict'], 'pcl', 5, 3, 2)
    cfg = load_config('', ['SOLVER.BASE_LR', 0.01, 'SOLVER.BIAS_LR_FACTOR', 2.0])
    assert cfg.SOLVER.LAYER_DECAY == 1.0
    optimizer, _ = make_optimizer(cfg.SOLVER, model)
    assert sorted(g['lr'] for g in optimizer.param_groups) == [0.01, 0.02]


def test_resnets_and_bad_values_stop_with_one_line(tiny_clip_files):
    model = build(tiny_clip_files['rn', 'state_dict'], 'baseline', 5, 3, 2)
    cfg = load_config('', ['SOLVER.LAYER_DECAY', 0.75])
    with pytest.raises(ReIDError, match=r'LAYER_DECAY=0.75 \(SOLVER.LAYER_DECAY, for CLIP-ReID '
                                        r'SOLVER.STAGE2.LAYER_DECAY\) needs a ViT image encoder'):
        make_optimizer(cfg.SOLVER, model)
    for key in ('SOLVER.LAYER_DECAY', 'SOLVER.STAGE2.LAYER_DECAY'):
        for value in (0.0, 1.5, float('nan')):
            with pytest.raises(ReIDError, match=f'config key {key} must be in'):
                load_config('', [key, value])


class _Captured:
    """Stands in for a method's Trainer: keeps the solver node and optimizer it was given."""
    made = []

    def __init__(self, cfg, solver_cfg, model, optimizer, *args, **kwargs):
        self.made.append((solver_cfg, model, optimizer))

    def run(self, start_epoch):
        pass


@pytest.mark.parametrize('method,key', [('pcl', 'SOLVER'), ('baseline', 'SOLVER'),
                                        ('clipreid', 'SOLVER.STAGE2')])
def test_each_method_s_recipe_applies_its_decay_key(tiny_clip_files, monkeypatch, method, key):
    """processor.recipes hands the optimizer of PCL, the baseline and CLIP-ReID stage 2 the
    node whose LAYER_DECAY applies (stage 1 trains the prompts only)."""
    from types import SimpleNamespace

    from processor import recipes
    for name in ('PromptTrainer', 'ImageTrainer', 'PCLTrainer', 'BaselineTrainer'):
        monkeypatch.setattr(recipes, name, _Captured)
    monkeypatch.setattr(recipes, '_evaluator', lambda cfg, data: None)
    monkeypatch.setattr(_Captured, 'made', [])
    opts = ['MODEL.METHOD', method, f'{key}.LAYER_DECAY', 0.5, f'{key}.BASE_LR', 0.01]
    cfg = load_config('', opts)
    model = build(tiny_clip_files['vit', 'state_dict'], method, 5, 3, 2)
    train = {'pcl': recipes.train_pcl, 'baseline': recipes.train_baseline,
             'clipreid': recipes.train_clipreid}[method]
    train(cfg, model, SimpleNamespace(num_classes=5), SimpleNamespace(device=None))
    _, _, optimizer = _Captured.made[-1]
    for group in optimizer.param_groups:  # the LRs before the scheduler's warmup factor
        group['lr'] = group['initial_lr']
    settings = _settings(optimizer, model)
    assert settings['image_encoder.transformer.resblocks.0.attn.in_proj_weight'][0] == \
        pytest.approx(0.0025)
    assert settings['image_encoder.ln_post.weight'][0] == pytest.approx(0.01)
    if method == 'clipreid':  # stage 1: prompts at the stage-1 LR, no decay
        stage1 = _settings(_Captured.made[0][2], model)
        assert set(stage1) == {'prompt_learner.cls_ctx'}


def test_the_logged_base_lr_is_the_heads_lr_whatever_group_comes_first(tiny_clip_files):
    from types import SimpleNamespace
    from processor.engine import Trainer
    model = build(tiny_clip_files['vit', 'state_dict'], 'pcl', 5, 3, 2)
    cfg = load_config('', _stage_opts('SOLVER') + ['SOLVER.WARMUP_ITERS', 0])
    optimizer, _ = make_optimizer(cfg.SOLVER, model)
    make_scheduler(cfg.SOLVER, optimizer)
    assert optimizer.param_groups[0]['lr'] == 0.00125  # the embeddings' group comes first
    trainer = Trainer.__new__(Trainer)
    trainer.optimizer, trainer.solver = optimizer, cfg.SOLVER
    assert trainer.base_lr() == 0.01
    assert trainer.curve_values({})['train/lr'] == 0.01
    trainer.solver = SimpleNamespace(BASE_LR=0.5)  # no group at BASE_LR: group 0's
    assert trainer.base_lr() == 0.00125
