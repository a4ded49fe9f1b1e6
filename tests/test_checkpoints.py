"""Re-ID checkpoints: round trip, upstream key names, mismatches, files that are not state_dicts."""
import logging

import pytest
import torch

from _model_fixtures import build, images, tiny_clip_files  # noqa: F401 (fixture)
from model import infer_method
from model.clip_weights import read_clip_file
from utils.errors import ReIDError


def _trained(model):
    """Move BN statistics and weights away from their initial values."""
    model.train()
    with torch.no_grad():
        model(images(8, seed=5), torch.arange(8) % model.num_class)
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def test_round_trip_gives_identical_features(tiny_clip_files, tmp_path):
    path = tiny_clip_files['vit', 'state_dict']
    source = _trained(build(path, 'clipreid', 5, 3, 2, 'MODEL.SIE_CAMERA', True))
    file = tmp_path / 'ViT-B-16_3.pth'
    torch.save(source.state_dict(), file)
    fresh = build(path, 'clipreid', 5, 3, 2, 'MODEL.SIE_CAMERA', True, seed=1).eval()
    x, cams = images(3), torch.tensor([0, 2, 1])
    assert not torch.equal(fresh(x, cam_label=cams), source(x, cam_label=cams))
    assert fresh.load_param(str(file)) == []
    assert torch.equal(fresh(x, cam_label=cams), source(x, cam_label=cams))
    # a DDP checkpoint ('module.' prefix) and a training-state file with a 'model' entry
    ddp = tmp_path / 'ddp.pth'
    torch.save({'module.' + k: v for k, v in source.state_dict().items()}, ddp)
    state = tmp_path / 'state.pth'
    torch.save({'model': source.state_dict(), 'epoch': 3, 'optimizer': {'lr': 0.1}}, state)
    for name in (ddp, state):
        other = build(path, 'clipreid', 5, 3, 2, 'MODEL.SIE_CAMERA', True, seed=2).eval()
        other.load_param(str(name))
        assert torch.equal(other(x, cam_label=cams), source(x, cam_label=cams))


def _upstream_names(clip_keys, arch):
    """Key names upstream CLIP-ReID's build_transformer gives, derived from OpenAI's names."""
    names = ['module.image_encoder.' + k[len('visual.'):] for k in clip_keys
             if k.startswith('visual.')]
    names += ['module.text_encoder.' + k for k in clip_keys if k.startswith('transformer.')]
    names += ['module.text_encoder.' + k for k in ('positional_embedding', 'ln_final.weight',
                                                   'ln_final.bias', 'text_projection')]
    names += ['module.prompt_learner.' + k for k in ('cls_ctx', 'token_prefix', 'token_suffix')]
    names += ['module.classifier.weight', 'module.classifier_proj.weight']
    names += [f'module.{bn}.{k}' for bn in ('bottleneck', 'bottleneck_proj') for k in
              ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')]
    return names + (['module.cv_embed'] if arch == 'vit' else [])


@pytest.mark.parametrize('arch', ['vit', 'rn'])
def test_upstream_named_state_dict_loads(tiny_clip_files, tmp_path, arch):
    path = tiny_clip_files[arch, 'torchscript']
    opts = ('MODEL.SIE_CAMERA', True) if arch == 'vit' else ()
    model = build(path, 'clipreid', 5, 3, 2, *opts)
    own = model.state_dict()
    names = _upstream_names(read_clip_file(path), arch)
    upstream = {}
    for name in names:
        like = own[name[len('module.'):]]  # KeyError here means our naming differs
        upstream[name] = (torch.randn(like.shape) if like.is_floating_point()
                          else torch.tensor(7))
    assert len(names) == len(own)
    file = tmp_path / 'upstream.pth'
    torch.save(upstream, file)
    model.load_param(str(file))
    assert all(torch.equal(v, upstream['module.' + k].to(v.dtype))
               for k, v in model.state_dict().items())


def test_other_architecture_is_refused_with_the_keys(tiny_clip_files, tmp_path):
    rn = build(tiny_clip_files['rn', 'state_dict'], 'baseline')
    file = tmp_path / 'rn.pth'
    torch.save(rn.state_dict(), file)
    vit = build(tiny_clip_files['vit', 'state_dict'], 'baseline')
    with pytest.raises(ReIDError) as err:
        vit.load_param(str(file))
    message = str(err.value)
    assert 'missing' in message and 'image_encoder.proj' in message
    assert 'unexpected (122)' in message and 'image_encoder.layer1.* (' in message
    assert 'mis-shaped' in message and 'bottleneck.weight (256,)' in message
    # same backbone, other patch stride: the position grid does not fit
    vit_file = tmp_path / 'vit.pth'
    torch.save(vit.state_dict(), vit_file)
    olp = build(tiny_clip_files['vit', 'state_dict'], 'baseline', 5, 3, 2,
                'MODEL.STRIDE_SIZE', '[12, 12]')
    with pytest.raises(ReIDError, match=r'image_encoder.positional_embedding \(33, 64\)'):
        olp.load_param(str(vit_file))
    # same backbone, other model family
    with pytest.raises(ReIDError, match='missing .*prompt_learner.cls_ctx'):
        build(tiny_clip_files['vit', 'state_dict'], 'clipreid').load_param(str(vit_file))
    with pytest.raises(ReIDError, match=r'unexpected \(1\): classifier_proj.weight; '
                                        r'mis-shaped \(1\): classifier.weight \(5, 64\)'):
        build(tiny_clip_files['vit', 'state_dict'], 'pcl').load_param(str(vit_file))


def test_other_number_of_identities_skips_only_per_identity_rows(tiny_clip_files, tmp_path,
                                                                 caplog):
    path = tiny_clip_files['vit', 'state_dict']
    source = _trained(build(path, 'clipreid', 7))
    file = tmp_path / 'seven.pth'
    torch.save(source.state_dict(), file)
    target = build(path, 'clipreid', 4, seed=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.INFO, logger='model.checkpoint'):
        skipped = target.load_param(str(file))
    assert sorted(skipped) == ['classifier.weight', 'classifier_proj.weight',
                               'prompt_learner.cls_ctx']
    assert 'another number of identities' in caplog.text
    for key, value in target.state_dict().items():
        expected = before[key] if key in skipped else source.state_dict()[key]
        assert torch.equal(value, expected), key
    target.eval()
    assert torch.equal(target(images(2)), source(images(2)))


def test_files_that_are_not_state_dicts(tiny_clip_files, tmp_path):
    model = build(tiny_clip_files['vit', 'state_dict'], 'baseline')
    whole = tmp_path / 'whole.pth'
    torch.save(model, whole)  # a pickled module, not a state_dict
    not_dict = tmp_path / 'list.pth'
    torch.save([torch.zeros(1)], not_dict)
    state_only = tmp_path / 'state.pth'
    torch.save({'epoch': 3, 'optimizer': {'lr': 0.1}}, state_only)
    text = tmp_path / 'notes.pth'
    text.write_text('hello')
    cases = [(whole, 'not a state_dict'), (not_dict, 'holds a list'),
             (state_only, 'not tensors'), (text, 'not a state_dict'),
             (tmp_path / 'absent.pth', 'no such file')]
    for file, match in cases:
        with pytest.raises(ReIDError, match=match):
            model.load_param(str(file))


def test_pretrain_choice_self_loads_the_whole_model(tiny_clip_files, tmp_path):
    path = tiny_clip_files['rn', 'torchscript']
    source = _trained(build(path, 'pcl', 6))
    file = tmp_path / 'RN50_10.pth'
    torch.save(source.state_dict(), file)
    model = build(path, 'pcl', 6, 3, 2, 'MODEL.PRETRAIN_CHOICE', 'self',
                  'MODEL.PRETRAIN_PATH_REID', str(file), seed=4).eval()
    assert torch.equal(model(images(2)), source(images(2)))


@pytest.mark.parametrize('arch', ['vit', 'rn'])
def test_method_is_inferred_from_checkpoint_keys(tiny_clip_files, tmp_path, arch):
    for method in ('clipreid', 'pcl', 'baseline'):
        state = build(tiny_clip_files[arch, 'state_dict'], method).state_dict()
        assert infer_method(state) == method
        file = tmp_path / f'{method}.pth'
        torch.save({'module.' + k: v for k, v in state.items()}, file)
        assert infer_method(str(file)) == method
