"""MODEL.CLIP_PRETRAINED: open_clip's tags build the activation they were trained with, and
non-OpenAI weights come through open_clip's own download (exercised here on local files)."""
import io
import logging
import os
import urllib.error
import warnings

import open_clip
import pytest
import torch
from open_clip import pretrained as oc_pretrained

from _model_fixtures import tiny_clip_files  # noqa: F401 (fixture)
from config import load_config
from model import clip_weights, load_clip, make_model
from model.clip_pretrained import pretraining
from utils.errors import ReIDError

# (MODEL.NAME, tag, open_clip activation): the tags of the test, one file per architecture
CASES = [('ViT-B-16', 'openai', 'QuickGELU'), ('ViT-B-16', 'laion2b_s34b_b88k', 'GELU'),
         ('RN50', 'yfcc15m', 'QuickGELU')]
LAION_REPO = 'laion/CLIP-ViT-B-16-laion2B-s34B-b88K'


def _open_clip_model(name, quick_gelu):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu).eval()


@pytest.fixture(scope='module')
def open_clip_files(tmp_path_factory):
    """{name: path}: random full-size weights in open_clip's format (fp32 state_dict of
    open_clip.create_model with the settings of the tag the test gives them: GELU for the
    ViT-B/16 LAION-2B file, QuickGELU for RN50 yfcc15m)."""
    folder, out = tmp_path_factory.mktemp('open_clip_weights'), {}
    for name, quick_gelu in (('ViT-B-16', False), ('RN50', True)):
        torch.manual_seed(0)
        out[name] = str(folder / f'{name}.bin')
        torch.save(_open_clip_model(name, quick_gelu).state_dict(), out[name])
    return out


@pytest.fixture(scope='module')
def image():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='module')
def references(open_clip_files, image):
    """{(name, tag): open_clip's image feature}: open_clip.create_model(name) with the tag's
    activation, holding the file's weights."""
    out = {}
    for name, tag, activation in CASES:
        model = _open_clip_model(name, activation == 'QuickGELU')
        model.load_state_dict(torch.load(open_clip_files[name], weights_only=True))
        with torch.no_grad():
            out[name, tag] = model.encode_image(image)
    return out


def _cfg(name, tag, path, *opts):
    return load_config('', ['MODEL.NAME', name, 'MODEL.CLIP_PRETRAINED', tag,
                            'MODEL.PRETRAIN_PATH', path, 'MODEL.METHOD', 'clipreid',
                            'MODEL.LAST_STRIDE', 2, 'INPUT.SIZE_TRAIN', '[224, 224]',
                            'INPUT.SIZE_TEST', '[224, 224]', *opts])


def _activations(model):
    return {type(m).__name__ for m in model.modules() if type(m).__name__ in ('GELU', 'QuickGELU')}


@pytest.fixture(scope='module')
def project_features(open_clip_files, image):
    """{(name, tag): (image feature of the project's model, its activations, log text)}."""
    out = {}
    for name, tag, _ in CASES:
        records = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        logger, level = logging.getLogger('model'), logging.getLogger('model').level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            model = make_model(_cfg(name, tag, open_clip_files[name]), 3, 1, 1,
                                   object_word='person').eval()
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        with torch.no_grad():
            out[name, tag] = (model.image_encoder(image)[2], _activations(model), records)
    return out


@pytest.mark.parametrize('name,tag,activation', CASES)
def test_each_tag_builds_open_clip_s_model(project_features, references, name, tag,
                                           activation):
    features, activations, log = project_features[name, tag]
    assert activations == {activation}
    assert (features - references[name, tag]).abs().max() <= 1e-5
    assert any(f"pretraining '{tag}': {activation} activation" in line for line in log)


def test_gelu_weights_built_with_quickgelu_give_other_features(project_features, references):
    """The LAION file read as OpenAI weights (QuickGELU): not open_clip's LAION model."""
    as_openai, _, _ = project_features['ViT-B-16', 'openai']
    laion = references['ViT-B-16', 'laion2b_s34b_b88k']
    assert (as_openai - laion).abs().max() > 1e-3
    assert not torch.allclose(project_features['ViT-B-16', 'laion2b_s34b_b88k'][0], as_openai,
                              atol=1e-3)


@pytest.mark.parametrize('name,tag,activation', [
    ('ViT-B-16', 'openai', 'QuickGELU'), ('ViT-B-16', 'laion2b_s34b_b88k', 'GELU'),
    ('ViT-B-16', 'datacomp_xl_s13b_b90k', 'GELU'), ('ViT-B-16', 'dfn2b', 'QuickGELU'),
    ('ViT-B-16', 'metaclip_fullcc', 'QuickGELU'), ('ViT-L-14', 'laion2b_s32b_b82k', 'GELU'),
    ('ViT-L-14', 'datacomp_xl_s13b_b90k', 'GELU'), ('ViT-L-14', 'dfn2b', 'QuickGELU'),
    ('ViT-L-14', 'dfn2b_s39b', 'GELU'), ('ViT-L-14', 'metaclip_fullcc', 'QuickGELU'),
    ('RN50', 'cc12m', 'QuickGELU'), ('ViT-B/16', 'LAION2B-s34b-b88k', 'GELU'),
    ('ViT-B-16-quickgelu', 'dfn2b', 'QuickGELU'), ('tiny-not-open-clip', 'openai', 'QuickGELU')])
def test_the_activation_follows_open_clip_s_tag_config(name, tag, activation):
    """The table of docs/backbones.md: what open_clip's per-tag config says; 'openai' is
    QuickGELU for any name (local files of any size, as before)."""
    assert pretraining(name, tag).activation == activation


def test_the_docs_table_says_what_open_clip_builds():
    text = open(os.path.join(ROOT, 'docs', 'backbones.md')).read()
    table = text.split('## CLIP backbones')[1].split('| `MODEL.NAME` | tag | activation |')[1]
    rows = [line.split('|')[1:4] for line in table.strip().split('\n\n')[0].splitlines()[1:]
            if line.startswith('|')]
    assert len(rows) == 5
    for names, tags, activation in rows:
        for name in names.split(','):
            for tag in tags.split(','):
                assert pretraining(name.strip(), tag.strip(' `')).activation == \
                    activation.strip(), (name, tag)


def test_bad_tags_stop_with_one_line_listing_the_valid_ones():
    with pytest.raises(ReIDError) as err:
        pretraining('RN50', 'laion2b_s34b_b88k')
    assert str(err.value) == ("MODEL.CLIP_PRETRAINED 'laion2b_s34b_b88k' is not an open_clip "
                              "pretraining of MODEL.NAME 'RN50'; valid tags: openai, yfcc15m, "
                              "cc12m")
    with pytest.raises(ReIDError, match="not an open_clip pretraining of MODEL.NAME 'ViT-B-16'; "
                                        "valid tags: openai, laion400m_e31, .*, dfn2b, "):
        pretraining('ViT-B-16', 'laion5b')
    with pytest.raises(ReIDError) as err:
        pretraining('tiny-not-open-clip', 'dfn2b')
    message = str(err.value)
    assert 'no pretrained weights for MODEL.NAME' in message and '\n' not in message
    assert 'ViT-L-14, ' in message and 'coca' not in message and 'CLIPA' not in message
    with pytest.raises(ReIDError, match='MODEL.CLIP_PRETRAINED is empty'):
        pretraining('ViT-B-16', ' ')
    with pytest.raises(ReIDError, match=r"MODEL.NAME 'ViT-L-14-CLIPA': open_clip builds it with "
                                        r'vision_cfg.final_ln_after_pool'):
        pretraining('ViT-L-14-CLIPA', 'datacomp1b')


def test_a_bad_tag_stops_make_model_before_reading_weights(tiny_clip_files):
    cfg = load_config('', ['MODEL.CLIP_PRETRAINED', 'no_such_tag',
                           'MODEL.PRETRAIN_PATH', tiny_clip_files['vit', 'state_dict']])
    with pytest.raises(ReIDError, match="CLIP_PRETRAINED 'no_such_tag' is not an open_clip"):
        load_clip(cfg)


# ------------------------------------------------ weights through open_clip's download
@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_weights, 'CLIP_CACHE_DIR', str(tmp_path / 'clip'))
    return tmp_path / 'clip'


def _tag_cfg(tag='laion2b_s34b_b88k', *opts):
    return load_config('', ['MODEL.CLIP_PRETRAINED', tag, *opts])


def test_hub_tags_download_through_open_clip(tiny_clip_files, cache, monkeypatch, caplog):
    """open_clip.pretrained.download_pretrained runs for real down to the hub client, which
    hands over a local file; weights of other sizes than open_clip's model are reported."""
    asked = []

    def hub(repo_id, filename, revision=None, cache_dir=None):
        asked.append((repo_id, filename, cache_dir))
        return tiny_clip_files['vit', 'state_dict']

    monkeypatch.setattr(oc_pretrained, 'hf_hub_download', hub)
    with caplog.at_level(logging.WARNING, logger='model'):
        clip_model, arch = load_clip(_tag_cfg())
    assert asked and all(a[0] == LAION_REPO and a[2] is None for a in asked)  # hub's own cache
    assert _activations(clip_model) == {'GELU'} and arch.vision_layers == 2
    assert "not open_clip's ViT-B-16 (embed_dim: 512 vs 32; vision layers: 12 vs 2" in caplog.text


class _Response(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.headers = {'Content-Length': str(len(data))}


def test_url_tags_download_into_the_clip_cache(tiny_clip_files, cache, monkeypatch):
    """Without the hub client open_clip takes the tag's URL; the file lands in ~/.cache/clip."""
    data = open(tiny_clip_files['vit', 'state_dict'], 'rb').read()
    asked = []
    monkeypatch.setattr(oc_pretrained, 'has_hf_hub', lambda necessary=False: False)
    monkeypatch.setattr(oc_pretrained.urllib.request, 'urlopen',
                        lambda url, *a, **k: asked.append(url) or _Response(data))
    clip_model, _ = load_clip(_tag_cfg('metaclip_fullcc'))
    assert asked == ['https://dl.fbaipublicfiles.com/MMPT/metaclip/b16_fullcc2.5b.pt']
    assert (cache / 'b16_fullcc2.5b.pt').read_bytes() == data
    assert _activations(clip_model) == {'QuickGELU'}


def _offline(*args, **kwargs):
    raise urllib.error.URLError('network is unreachable')


@pytest.mark.parametrize('placed', ['open_clip_pytorch_model.bin', 'open_clip_model.safetensors'])
def test_a_placed_file_is_found_without_the_network(tiny_clip_files, cache, monkeypatch, placed):
    monkeypatch.setattr(oc_pretrained, 'download_pretrained', _offline)
    folder = cache / LAION_REPO
    folder.mkdir(parents=True)
    state_dict = torch.load(tiny_clip_files['vit', 'state_dict'], weights_only=True)
    if placed.endswith('.safetensors'):  # the hub's other format
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / placed))
    else:
        torch.save(state_dict, folder / placed)
    clip_model, _ = load_clip(_tag_cfg())
    assert _activations(clip_model) == {'GELU'}
    assert torch.equal(clip_model.visual.proj.half(), state_dict['visual.proj'])


def test_other_tower_settings_of_open_clip_s_config_are_built():
    """ViT-g-14's MLP ratio comes from open_clip's model config, and reaches the towers."""
    spec = pretraining('ViT-g-14', 'laion2b_s34b_b88k')
    assert spec.vision == {'mlp_ratio': 4.3637} and spec.text == {}
    from dataclasses import replace

    from model.clip_backbone import build_clip
    from model.tiny_clip import TINY_ARCHS
    model = build_clip(TINY_ARCHS['vit'], replace(spec, vision={'mlp_ratio': 2.0}))
    assert model.visual.transformer.resblocks[0].mlp.c_fc.out_features == 128  # width 64 x 2
    assert model.transformer.resblocks[0].mlp.c_fc.out_features == 4 * 128


@pytest.mark.parametrize('hub', [True, False])
def test_offline_stops_with_one_line_naming_file_and_folder(cache, monkeypatch, hub):
    monkeypatch.setattr(oc_pretrained, 'download_pretrained', _offline)
    monkeypatch.setattr(oc_pretrained, 'has_hf_hub', lambda necessary=False: hub)
    with pytest.raises(ReIDError) as err:
        load_clip(_tag_cfg('metaclip_fullcc'))
    message = str(err.value)
    if hub:
        file, folder = 'open_clip_pytorch_model.bin', cache / 'timm' / \
            'vit_base_patch16_clip_224.metaclip_2pt5b'
    else:
        file, folder = 'b16_fullcc2.5b.pt', cache
    assert "MODEL.CLIP_PRETRAINED 'metaclip_fullcc'" in message
    assert f'place {file} (from ' in message and f' in {folder}, or set MODEL.PRETRAIN_PATH' \
        in message
    assert 'network is unreachable' in message and '\n' not in message


def test_the_openai_tag_keeps_the_openai_path(tiny_clip_files, cache, monkeypatch):
    """'openai' never asks open_clip's downloader: OpenAI's cache file as before."""
    monkeypatch.setattr(oc_pretrained, 'download_pretrained', _offline)
    cache.mkdir()
    (cache / 'ViT-B-16.pt').write_bytes(open(tiny_clip_files['vit', 'torchscript'], 'rb').read())
    clip_model, _ = load_clip(load_config('', []))
    assert _activations(clip_model) == {'QuickGELU'}
    assert os.listdir(cache) == ['ViT-B-16.pt']


# ------------------------------------------------------------------- shipped configs
def _flat_config(rel):
    cfg = load_config(os.path.join(ROOT, 'configs', rel))
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if hasattr(value, 'items'):
                walk(value, f'{prefix}{key}.')
            else:
                out[prefix + key] = value
    walk(cfg, '')
    return out


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('rel,base,changed', [
    ('person/vit_clipreid_laion2b.yml', 'person/vit_clipreid.yml',
     {'MODEL.CLIP_PRETRAINED': 'laion2b_s34b_b88k'}),
    ('person/vit_l14_clipreid.yml', 'person/vit_clipreid.yml',
     {'MODEL.NAME': 'ViT-L-14', 'MODEL.STRIDE_SIZE': [14, 14],
      'SOLVER.STAGE2.BASE_LR': 1e-5, 'SOLVER.STAGE2.LAYER_DECAY': 0.75}),
    ('pcl/market1501_vit_l14.yml', 'pcl/market1501.yml',
     {'MODEL.NAME': 'ViT-L-14', 'MODEL.STRIDE_SIZE': [14, 14],
      'SOLVER.BASE_LR': 7e-4, 'SOLVER.LAYER_DECAY': 0.75})])
def test_backbone_configs_change_only_the_backbone(rel, base, changed):
    """The ViT-L/14 and LAION configs are their ViT-B/16 recipe with another CLIP (and its
    decay and LR); their tags exist for their architecture; they say they were not trained."""
    ours, theirs = _flat_config(rel), _flat_config(base)
    diff = {k: ours[k] for k in ours if ours[k] != theirs[k]}
    assert diff.pop('OUTPUT_DIR') != theirs['OUTPUT_DIR']
    assert {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in diff.items()} == changed
    spec = pretraining(ours['MODEL.NAME'], ours['MODEL.CLIP_PRETRAINED'])
    assert spec.activation == ('GELU' if 'laion' in rel else 'QuickGELU')
    header = open(os.path.join(ROOT, 'configs', rel)).read().split('MODEL:')[0]
    assert 'Not trained here' in ' '.join(line.lstrip('# ') for line in header.splitlines())


def test_a_pretraining_normalised_otherwise_is_warned_about():
    from types import SimpleNamespace
    from model.factory import normalisation_mismatch
    cfg = load_config('', [])
    openai = SimpleNamespace(tag='openai', mean=tuple(cfg.INPUT.PIXEL_MEAN),
                             std=tuple(cfg.INPUT.PIXEL_STD))
    assert normalisation_mismatch(openai, cfg.INPUT) == ''
    halves = SimpleNamespace(tag='webli', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert 'set them to match' in normalisation_mismatch(halves, cfg.INPUT)
    assert normalisation_mismatch(SimpleNamespace(tag='x', mean=(), std=()), cfg.INPUT) == ''
