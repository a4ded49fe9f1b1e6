"""CLIP weights: sources (path, cache, download), both OpenAI formats, architecture inference."""
import hashlib
import io
import os
import urllib.error
import warnings

import open_clip
import pytest
import torch

from _model_fixtures import tiny_clip_files  # noqa: F401 (fixture)
from config import load_config
from model import clip_weights, load_clip, make_model
from model.clip_backbone import clip_from_state_dict, infer_clip_arch
from model.clip_weights import (canonical_name, load_clip_state_dict, official_url,
                                read_clip_file)
from model.tiny_clip import TINY_ARCHS, save_tiny_clip, write_openai_clip
from utils.errors import ReIDError


@pytest.mark.parametrize('fmt', ['state_dict', 'torchscript'])
@pytest.mark.parametrize('arch', ['vit', 'rn'])
def test_architecture_is_read_from_the_weights(tiny_clip_files, arch, fmt):
    state_dict, _ = load_clip_state_dict('ViT-B-16', tiny_clip_files[arch, fmt])
    inferred = infer_clip_arch(state_dict)
    assert inferred == TINY_ARCHS[arch]
    model, built = clip_from_state_dict(state_dict)
    assert built == inferred
    assert all(p.dtype == torch.float32 for p in model.parameters())
    towers = [model.transformer] + ([model.visual.transformer] if arch == 'vit' else [])
    assert all(type(t.resblocks[0].mlp.gelu).__name__ == 'QuickGELU' for t in towers)


def test_both_formats_hold_the_same_weights(tiny_clip_files):
    with warnings.catch_warnings():  # torch.jit is deprecated; the archive is real
        warnings.simplefilter('ignore', FutureWarning)
        archive = torch.jit.load(tiny_clip_files['vit', 'torchscript'], map_location='cpu')
    assert isinstance(archive, torch.jit.ScriptModule)
    plain = read_clip_file(tiny_clip_files['vit', 'state_dict'])
    scripted = read_clip_file(tiny_clip_files['vit', 'torchscript'])
    assert set(scripted) == set(plain) | {'input_resolution', 'context_length', 'vocab_size'}
    assert all(torch.equal(plain[k], scripted[k]) for k in plain)
    assert plain['token_embedding.weight'].shape == (49408, 128)
    assert plain['visual.conv1.weight'].dtype == torch.float16  # as OpenAI ships them


def test_name_spellings_and_official_urls():
    assert canonical_name('ViT-B/16') == canonical_name('ViT-B-16') == 'ViT-B-16'
    for name, file in [('ViT-B/16', 'ViT-B-16.pt'), ('ViT-B/32', 'ViT-B-32.pt'),
                       ('ViT-L/14', 'ViT-L-14.pt'), ('RN50', 'RN50.pt'), ('RN101', 'RN101.pt')]:
        url = official_url(name)
        assert url.startswith('https://openaipublic.azureedge.net/clip/models/')
        assert url.endswith('/' + file)
        digest = url.split('/')[-2]
        assert len(digest) == 64 and int(digest, 16) >= 0
    assert official_url('ViT-B/16') == official_url('ViT-B-16')
    assert official_url('no-such-model') == ''


def _no_network(*args, **kwargs):
    raise urllib.error.URLError('network is unreachable')


def test_cache_is_used_for_both_spellings(tiny_clip_files, tmp_path, monkeypatch):
    monkeypatch.setattr(clip_weights, 'CLIP_CACHE_DIR', str(tmp_path))
    monkeypatch.setattr(clip_weights.urllib.request, 'urlopen', _no_network)
    cached = tmp_path / 'ViT-B-16.pt'
    cached.write_bytes(open(tiny_clip_files['vit', 'torchscript'], 'rb').read())
    for name in ('ViT-B/16', 'ViT-B-16'):
        state_dict, path = load_clip_state_dict(name)
        assert path == str(cached) and infer_clip_arch(state_dict) == TINY_ARCHS['vit']


def test_offline_without_file_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_weights, 'CLIP_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setattr(clip_weights.urllib.request, 'urlopen', _no_network)
    with pytest.raises(ReIDError) as err:
        load_clip_state_dict('ViT-B/16')
    message = str(err.value)
    assert str(tmp_path / 'cache' / 'ViT-B-16.pt') in message
    assert 'MODEL.PRETRAIN_PATH' in message and 'network is unreachable' in message
    assert not any(p.name.endswith('.part') for p in (tmp_path / 'cache').iterdir())


class _FakeResponse(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.headers = {'Content-Length': str(len(data))}


def test_download_checks_sha256_and_writes_atomically(tiny_clip_files, tmp_path, monkeypatch):
    data = open(tiny_clip_files['rn', 'state_dict'], 'rb').read()
    good = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(clip_weights, 'CLIP_CACHE_DIR', str(tmp_path))
    monkeypatch.setattr(clip_weights.urllib.request, 'urlopen',
                        lambda url, timeout=None: _FakeResponse(data))
    monkeypatch.setattr(clip_weights, 'official_url',
                        lambda name: f'https://example.org/clip/models/{digest}/RN50.pt')
    digest = '0' * 64  # wrong checksum: refused, nothing left in the cache
    with pytest.raises(ReIDError, match='sha256'):
        load_clip_state_dict('RN50')
    assert os.listdir(tmp_path) == []
    digest = good
    state_dict, path = load_clip_state_dict('RN50')
    assert path == str(tmp_path / 'RN50.pt') and os.listdir(tmp_path) == ['RN50.pt']
    assert infer_clip_arch(state_dict) == TINY_ARCHS['rn']


def test_pretrain_path_errors(tmp_path):
    with pytest.raises(ReIDError, match='no such file'):
        load_clip_state_dict('ViT-B-16', str(tmp_path / 'missing.pt'))
    junk = tmp_path / 'junk.pt'
    junk.write_text('not a checkpoint')
    with pytest.raises(ReIDError, match='neither a TorchScript archive nor a state_dict'):
        load_clip_state_dict('ViT-B-16', str(junk))
    other = tmp_path / 'other.pt'
    torch.save({'weight': torch.zeros(2)}, other)
    with pytest.raises(ReIDError, match='does not hold OpenAI CLIP weights'):
        load_clip_state_dict('ViT-B-16', str(other))


def test_weights_that_do_not_fit_their_sizes(tiny_clip_files):
    state_dict, path = load_clip_state_dict('RN50', tiny_clip_files['vit', 'state_dict'])
    del state_dict['visual.ln_post.weight']
    state_dict['visual.extra'] = torch.zeros(1)
    with pytest.raises(ReIDError, match=r'missing \(1\): visual.ln_post.weight; '
                                        r'unexpected \(1\): visual.extra'):
        clip_from_state_dict(state_dict, path)


def test_cli_writes_a_torchscript_archive(tmp_path):
    from model.tiny_clip import main
    out = tmp_path / 'sub' / 'tiny.pt'
    main(['--out', str(out), '--arch', 'rn', '--fmt', 'torchscript', '--seed', '3'])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        assert isinstance(torch.jit.load(str(out)), torch.jit.ScriptModule)
    assert torch.equal(read_clip_file(str(out))['visual.attnpool.positional_embedding'],
                       read_clip_file(save_tiny_clip(tmp_path / 'b.pt', 'rn', seed=3))[
                           'visual.attnpool.positional_embedding'])


# ---------------------------------------------- full-size CLIPs built by open_clip itself
FULL_SIZE = {'ViT-B-16': ('ViT-B-16-quickgelu', 12, 8), 'RN50': ('RN50-quickgelu', 32, 8)}


@pytest.fixture(scope='session')
def full_size_clips(tmp_path_factory):
    """{name: (open_clip model holding the written weights, {fmt: path})}: random full-size
    CLIPs from open_clip's own factory (its head counts, not our loader's inference), written
    once per session in both OpenAI formats with fp16 weights, as OpenAI ships them."""
    folder, out = tmp_path_factory.mktemp('full_size_clip'), {}
    for name, (factory_name, vision_heads, text_heads) in FULL_SIZE.items():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            reference = open_clip.create_model(factory_name, pretrained=None)
        assert _heads(reference) == (vision_heads, text_heads)
        state_dict = {k: v.half() if v.is_floating_point() else v
                      for k, v in reference.state_dict().items()}
        reference.load_state_dict(state_dict)  # the fp16-rounded weights, in fp32
        params = {n for n, _ in reference.named_parameters()}
        out[name] = (reference.eval(), {
            fmt: write_openai_clip(str(folder / f'{name}_{fmt}.pt'), state_dict, params, fmt)
            for fmt in ('state_dict', 'torchscript')})
    return out


def _heads(model):
    visual = model.visual
    vision = (visual.attnpool.num_heads if hasattr(visual, 'attnpool')
              else visual.transformer.resblocks[0].attn.num_heads)
    return vision, model.transformer.resblocks[0].attn.num_heads


@pytest.mark.parametrize('fmt', ['state_dict', 'torchscript'])
@pytest.mark.parametrize('name', list(FULL_SIZE))
def test_full_size_clips_load_with_their_real_heads(full_size_clips, name, fmt):
    """make_model on open_clip's own ViT-B/16 and RN50: the same image and text features at
    the native resolution (224, ViT stride 16, ResNet last stride 2)."""
    reference, paths = full_size_clips[name]
    cfg = load_config('', ['MODEL.NAME', name, 'MODEL.PRETRAIN_PATH', paths[fmt],
                           'MODEL.LAST_STRIDE', 2, 'MODEL.METHOD', 'clipreid',
                           'INPUT.SIZE_TRAIN', '[224, 224]', 'INPUT.SIZE_TEST', '[224, 224]'])
    model = make_model(cfg, 3, 1, 1, object_word='person').eval()
    clip_model, arch = load_clip(cfg)
    assert _heads(clip_model) == _heads(reference)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    tokens = open_clip.tokenize(['a photo of a person.', 'a tiger'])
    with torch.no_grad():
        image = model.image_encoder(x)[2]
        text = model.text_encoder(clip_model.token_embedding(tokens), tokens)
        assert torch.allclose(image, reference.encode_image(x), atol=1e-4, rtol=1e-4)
        assert torch.allclose(text, reference.encode_text(tokens), atol=1e-4, rtol=1e-4)
