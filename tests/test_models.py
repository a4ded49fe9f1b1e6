"""Re-ID adaptations of the CLIP towers and the three models' outputs, on tiny random CLIPs."""
import logging
import math

import open_clip
import pytest
import torch

from _model_fixtures import build, images, make_cfg, tiny_clip_files  # noqa: F401 (fixture)
from model import load_clip, make_model
from model.clip_weights import read_clip_file
from utils.errors import ReIDError


def _source(i, n_out, n_in):
    """Bilinear, align_corners=False: (low index, high index, weight of high) for output i."""
    s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    low = min(int(math.floor(s)), n_in - 1)
    return low, min(low + 1, n_in - 1), s - low


@pytest.mark.parametrize('size,stride,grid', [((128, 64), 16, (8, 4)), ((128, 64), 12, (10, 5)),
                                              ((48, 112), 16, (3, 7))])
def test_vit_grid_follows_input_and_stride(tiny_clip_files, size, stride, grid):
    path = tiny_clip_files['vit', 'state_dict']
    model = build(path, 'baseline', 5, 3, 2, 'MODEL.STRIDE_SIZE', f'[{stride}, {stride}]',
                  size=size)
    encoder = model.image_encoder
    assert encoder.conv1.stride == (stride, stride) and encoder.grid == grid
    pos = encoder.positional_embedding.detach()
    assert pos.shape == (grid[0] * grid[1] + 1, 64)
    old = read_clip_file(path)['visual.positional_embedding'].float()
    assert torch.equal(pos[0], old[0])  # class-token position kept
    old_grid = old[1:].reshape(4, 4, -1)
    new_grid = pos[1:].reshape(*grid, -1)
    for i in (0, grid[0] - 1):
        for j in (0, grid[1] - 1):
            y0, y1, wy = _source(i, grid[0], 4)
            x0, x1, wx = _source(j, grid[1], 4)
            expected = ((1 - wy) * ((1 - wx) * old_grid[y0, x0] + wx * old_grid[y0, x1])
                        + wy * ((1 - wx) * old_grid[y1, x0] + wx * old_grid[y1, x1]))
            assert torch.allclose(new_grid[i, j], expected, atol=1e-6)
    model.eval()
    assert model(images(2, size)).shape == (2, 64 + 32)
    with pytest.raises(ReIDError, match='INPUT.SIZE_TEST'):
        model(images(2, (size[0] + 32, size[1])))


@pytest.mark.parametrize('last_stride,grid', [(1, (8, 4)), (2, (4, 2))])
def test_resnet_last_stride_and_attention_pool_grid(tiny_clip_files, last_stride, grid):
    model = build(tiny_clip_files['rn', 'torchscript'], 'baseline', 5, 3, 2,
                  'MODEL.LAST_STRIDE', last_stride)
    pool = model.image_encoder.attnpool
    assert pool.positional_embedding.shape == (grid[0] * grid[1] + 1, 256)
    seen = {}
    model.image_encoder.layer4.register_forward_hook(lambda m, i, o: seen.update(x4=o))
    model.image_encoder.layer3.register_forward_hook(lambda m, i, o: seen.update(x3=o))
    model.eval()
    x = images(2)
    last, feat, proj = model.image_features(x)
    assert seen['x4'].shape == (2, 256, *grid) and seen['x3'].shape == (2, 128, 8, 4)
    assert torch.allclose(feat, seen['x4'].mean(dim=(2, 3)))
    assert torch.allclose(last, seen['x3'].mean(dim=(2, 3)))
    assert proj.shape == (2, 32)


def test_sie_changes_only_the_class_token(tiny_clip_files):
    model = build(tiny_clip_files['vit', 'state_dict'], 'clipreid', 5, 3, 2,
                  'MODEL.SIE_CAMERA', True, 'MODEL.SIE_VIEW', True, 'MODEL.SIE_COE', 2.0)
    assert model.cv_embed.shape == (3 * 2, 64)
    tokens = []
    model.image_encoder.ln_pre.register_forward_pre_hook(lambda m, args: tokens.append(args[0]))
    model.eval()
    x = images(2)
    with torch.no_grad():
        plain = model(x)
        with_sie = model(x, cam_label=torch.tensor([2, 0]), view_label=torch.tensor([1, 1]))
    diff = tokens[1] - tokens[0]
    assert torch.count_nonzero(diff[:, 1:]) == 0
    expected = 2.0 * model.cv_embed.detach()[[2 * 2 + 1, 0 * 2 + 1]]
    assert torch.allclose(diff[:, 0], expected, atol=1e-6)
    assert not torch.allclose(plain, with_sie)


def test_sie_view_with_a_single_view_warns(tiny_clip_files, caplog):
    path = tiny_clip_files['vit', 'state_dict']
    with caplog.at_level(logging.WARNING):
        build(path, 'clipreid', 5, 3, 1, 'MODEL.SIE_VIEW', True)
    assert 'single view' in caplog.text and 'DATASETS.VIEW_LABELS' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build(path, 'clipreid', 5, 3, 8, 'MODEL.SIE_VIEW', True)
    assert 'single view' not in caplog.text


def test_sie_on_a_resnet_is_refused(tiny_clip_files):
    with pytest.raises(ReIDError, match='ViT'):
        build(tiny_clip_files['rn', 'state_dict'], 'clipreid', 5, 3, 2, 'MODEL.SIE_CAMERA', True)


@pytest.mark.parametrize('arch,dims', [('vit', (64, 64, 32)), ('rn', (128, 256, 32))])
@pytest.mark.parametrize('method', ['clipreid', 'pcl', 'baseline'])
def test_train_outputs_and_eval_features(tiny_clip_files, method, arch, dims):
    model = build(tiny_clip_files[arch, 'torchscript'], method, 7)
    x, labels = images(4), torch.tensor([0, 1, 6, 6])
    out = model(x, labels)
    last, feat, proj = dims
    logits = {'clipreid': [7, 7], 'pcl': [7], 'baseline': [7, 7]}[method]
    feats = {'clipreid': [last, feat, proj], 'pcl': [feat + proj],
             'baseline': [last, feat, proj]}[method]
    assert [t.shape[1] for t in out['logits']] == logits
    assert [t.shape[1] for t in out['feats']] == feats
    assert all(t.shape[0] == 4 for t in out['logits'] + out['feats'])
    if method == 'clipreid':
        assert out['image_proj'] is out['feats'][2]
    if method != 'pcl':  # the triplet loss reads the encoder's three features, as upstream
        for got, want in zip(out['feats'], model.image_features(x)):
            assert torch.equal(got, want)
    sum(t.sum() for t in out['logits'] + out['feats']).backward()
    assert model.bottleneck.bias.grad is None  # BN-neck shift is frozen
    model.eval()
    with torch.no_grad():
        first, again, part = model(x), model(x), model(x[:2])
    assert first.shape == (4, feat + proj)
    assert torch.equal(first, again) and torch.allclose(first[:2], part, atol=1e-5)
    _, img_feature, img_proj = model.image_features(x)
    assert torch.allclose(first, torch.cat([model.bottleneck(img_feature),
                                            model.bottleneck_proj(img_proj)], 1))


def test_neck_feat_before_and_no_neck(tiny_clip_files):
    path = tiny_clip_files['vit', 'state_dict']
    before = build(path, 'baseline', 5, 3, 2, 'TEST.NECK_FEAT', 'before').eval()
    x = images(3)
    _, feat, proj = before.image_features(x)
    assert torch.equal(before(x), torch.cat([feat, proj], 1))
    no_neck = build(path, 'pcl', 5, 3, 2, 'MODEL.NECK', 'no').eval()
    assert not any(k.startswith('bottleneck') for k in no_neck.state_dict())
    _, feat, proj = no_neck.image_features(x)
    assert torch.equal(no_neck(x), torch.cat([feat, proj], 1))


def test_pcl_freezes_the_patch_projection_only(tiny_clip_files):
    model = build(tiny_clip_files['vit', 'state_dict'], 'pcl')
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ['image_encoder.conv1.weight', 'bottleneck.bias', 'bottleneck_proj.bias']
    assert model.classifier.in_features == 64 + 32 and model.classifier.bias is None


def test_prompt_and_text_encoder_match_clip(tiny_clip_files):
    path = tiny_clip_files['vit', 'state_dict']
    model = build(path, 'clipreid', 4)
    learner = model.prompt_learner
    assert learner.cls_ctx.shape == (4, 4, 128)
    assert learner.token_prefix.shape == (1, 5, 128) and learner.token_suffix.shape == (1, 68, 128)
    table = read_clip_file(path)['token_embedding.weight'].float()
    person, x_id = open_clip.tokenize('person')[0, 1], open_clip.tokenize('X')[0, 1]
    assert torch.equal(learner.token_suffix[0, 0], table[person])
    # with every context row set to the embedding of 'X', the prompt is the plain sentence
    clip_model, _ = load_clip(make_cfg(path))
    with torch.no_grad():
        learner.cls_ctx[:] = table[x_id]
        reference = clip_model.encode_text(open_clip.tokenize('A photo of a X X X X person.'))
        ours = model.encode_text(torch.tensor([2]))
    assert torch.allclose(ours, reference, atol=1e-5)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    learner.cls_ctx.grad = None
    model.encode_text(torch.tensor([1, 3])).sum().backward()
    touched = learner.cls_ctx.grad.abs().sum(dim=(1, 2)) > 0
    assert touched.tolist() == [False, True, False, True]
    assert model.all_text_features().shape == (4, 32)


def test_prompt_object_and_context_length_options(tiny_clip_files):
    path = tiny_clip_files['rn', 'state_dict']
    model = build(path, 'clipreid', 3, 3, 2, 'MODEL.PROMPT_OBJECT', 'vehicle',
                  'MODEL.PROMPT_N_CTX', 2)
    table = read_clip_file(path)['token_embedding.weight'].float()
    vehicle = open_clip.tokenize('vehicle')[0, 1]
    assert model.prompt_learner.text == 'A photo of a X X vehicle.'
    assert model.prompt_learner.cls_ctx.shape == (3, 2, 128)
    assert torch.equal(model.prompt_learner.token_suffix[0, 0], table[vehicle])


def test_unknown_method_and_options_are_refused(tiny_clip_files):
    path = tiny_clip_files['vit', 'state_dict']
    for opts, match in [(('MODEL.METHOD', 'transreid'), 'MODEL.METHOD'),
                        (('MODEL.NECK', 'bn'), 'MODEL.NECK'),
                        (('TEST.NECK_FEAT', 'middle'), 'TEST.NECK_FEAT'),
                        (('MODEL.PRETRAIN_CHOICE', 'self'), 'PRETRAIN_PATH_REID')]:
        with pytest.raises(ReIDError, match=match):
            make_model(make_cfg(path, *opts), 5, 3, 2)


