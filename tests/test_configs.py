"""The ready-made YAMLs in configs/ and verbatim upstream YAMLs load with config.load_config."""
import pathlib

import pytest
import yaml

from config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / 'configs').rglob('*.yml'))
UPSTREAM = ROOT / 'tests' / 'fixtures' / 'upstream_yaml'


def _load(rel, *opts):
    return load_config(str(ROOT / 'configs' / rel), list(opts))


def _flat(node, prefix=''):
    out = {}
    for key, value in node.items():
        if hasattr(value, 'items'):
            out.update(_flat(value, f'{prefix}{key}.'))
        else:
            out[prefix + key] = value
    return out


def test_configs_exist_for_every_upstream_setting():
    names = {str(p.relative_to(ROOT / 'configs')) for p in CONFIGS}
    for folder in ('person', 'msmt17', 'veri', 'vehicleid'):
        for variant in ('vit_base', 'vit_clipreid', 'cnn_base', 'cnn_clipreid',
                        'vit_clipreid_sie_olp'):
            assert f'{folder}/{variant}.yml' in names
    for species in ('yak', 'tiger', 'elephant'):
        for variant in ('vit_clipreid', 'cnn_clipreid', 'vit_clipreid_ori', 'cnn_clipreid_ori'):
            assert f'{species}/{variant}.yml' in names
    for dataset in ('market1501', 'msmt17', 'veri'):
        assert f'pcl/{dataset}.yml' in names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: str(p.relative_to(ROOT / 'configs')))
def test_every_config_loads_and_names_its_method(path):
    cfg = load_config(str(path))
    raw = yaml.safe_load(path.read_text())
    assert raw['MODEL']['METHOD'] == cfg.MODEL.METHOD  # set in the file, not by default
    assert cfg.MODEL.METHOD in ('clipreid', 'pcl', 'baseline')
    if path.parent.name != 'demo':
        assert cfg.DATASETS.ROOT_DIR == '../data'
        assert cfg.OUTPUT_DIR.startswith('./output/')
    if path.parent.name == 'pcl':
        assert cfg.MODEL.METHOD == 'pcl'
    elif path.parent.name == 'generalization':  # <method>_<protocol>.yml
        assert cfg.MODEL.METHOD == path.stem.split('_')[0]
    elif path.parent.name != 'demo':
        assert cfg.MODEL.METHOD == ('baseline' if path.stem.endswith('_base') else 'clipreid')


def test_output_dirs_are_distinct():
    outputs = [load_config(str(p)).OUTPUT_DIR for p in CONFIGS if p.parent.name != 'demo']
    assert len(outputs) == len(set(outputs))


def _yaml_keys(path):
    """The dotted keys a YAML file sets."""
    return set(_flat(yaml.safe_load(path.read_text())))


# Keys of upstream's pcl-vit.yml that name places or runs, not the recipe; VeRi (which upstream
# PCL-CLIP does not ship) keeps CLIP-ReID's vehicle image size.
_PCL_SITE_KEYS = {'DATASETS.NAMES', 'DATASETS.ROOT_DIR', 'OUTPUT_DIR', 'TEST.EVAL'}


@pytest.mark.parametrize('dataset', ['market1501', 'msmt17', 'veri'])
def test_pcl_configs_hold_the_current_upstream_settings(dataset):
    fixture = UPSTREAM / 'pcl_pcl-vit.yml'
    upstream = _flat(load_config(str(fixture)))
    ours = _flat(_load(f'pcl/{dataset}.yml'))
    keys = _yaml_keys(fixture) - _PCL_SITE_KEYS
    if dataset == 'veri':
        keys -= {'INPUT.SIZE_TRAIN', 'INPUT.SIZE_TEST'}
        assert list(ours['INPUT.SIZE_TRAIN']) == list(ours['INPUT.SIZE_TEST']) == [256, 256]
    assert {k: ours[k] for k in keys} == {k: upstream[k] for k in keys}
    assert ours['DATASETS.NAMES'] == dataset
    # what upstream's pcl-vit.yml leaves to its code: SGD momentum from the defaults, one lr and
    # weight decay for every parameter (make_pcl_optimizer), fp16 autocast + GradScaler
    assert (ours['SOLVER.MOMENTUM'], ours['SOLVER.BIAS_LR_FACTOR'], ours['SOLVER.LARGE_FC_LR']) \
        == (0.9, 1.0, False)
    assert ours['SOLVER.WEIGHT_DECAY_BIAS'] == ours['SOLVER.WEIGHT_DECAY'] == 5e-4
    assert ours['SOLVER.AMP'] == 'fp16'
    assert (ours['MODEL.PCL_TEMPERATURE'], ours['MODEL.MEMORY_UPDATE']) == (0.05, 'hard')
    assert (ours['TEST.RE_RANKING_K1'], ours['TEST.RE_RANKING_K2'],
            ours['TEST.RE_RANKING_LAMBDA']) == (50, 15, 0.3)


def test_upstream_pcl_fixture_is_the_paper_revision():
    """The fixture is pcl-vit.yml after upstream's commit "modify to config in paper"."""
    s = load_config(str(UPSTREAM / 'pcl_pcl-vit.yml')).SOLVER
    assert (s.OPTIMIZER_NAME, s.BASE_LR, s.WEIGHT_DECAY, s.IMS_PER_BATCH) == \
        ('SGD', 3.5e-4, 5e-4, 256)
    assert (s.MAX_EPOCHS, s.ITERS, tuple(s.STEPS), s.GAMMA) == (60, 200, (30, 50), 0.1)
    assert (s.WARMUP_METHOD, s.WARMUP_ITERS, s.WARMUP_FACTOR) == ('linear', 10, 0.1)


def test_unsupervised_pcl_configs_hold_their_settings():
    """ClusterContrast's loop with the PCL-CLIP model (sources in docs/unsupervised.md)."""
    for dataset, size, eps, iters in (('market1501', (256, 128), 0.6, 200),
                                      ('msmt17', (256, 128), 0.7, 400),
                                      ('veri', (256, 256), 0.6, 400)):
        cfg = _load(f'pcl/{dataset}_unsup.yml')
        m, c, s = cfg.MODEL, cfg.CLUSTER, cfg.SOLVER
        assert cfg.DATASETS.NAMES == dataset and m.NAME == 'ViT-B-16' and m.UNSUPERVISED
        assert tuple(cfg.INPUT.SIZE_TRAIN) == size and tuple(cfg.INPUT.SIZE_TEST) == size
        assert (c.LOSS, c.EPS, c.MIN_SAMPLES, c.K1, c.K2, c.PERIOD) == ('cluster', eps, 4, 30, 6, 1)
        assert (m.PCL_TEMPERATURE, m.MEMORY_MOMENTUM, m.MEMORY_UPDATE) == (0.05, 0.1, 'hard')
        assert (s.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE, s.ITERS) == (256, 16, iters)
        assert (s.OPTIMIZER_NAME, s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY) == \
            ('SGD', 3.5e-4, 0.9, 5e-4)
        assert (s.WARMUP_ITERS, s.WARMUP_FACTOR, tuple(s.STEPS), s.MAX_EPOCHS) == \
            (10, 0.01, (20, 40), 50)


def test_clipreid_stage_settings_mirror_upstream():
    vit = _load('person/vit_clipreid.yml').SOLVER
    assert (vit.STAGE1.BASE_LR, vit.STAGE1.WARMUP_LR_INIT, vit.STAGE1.LR_MIN) == \
        (0.00035, 1e-5, 1e-6)
    assert (vit.STAGE1.MAX_EPOCHS, vit.STAGE1.WARMUP_EPOCHS, vit.STAGE1.WEIGHT_DECAY) == \
        (120, 5, 1e-4)
    assert (vit.STAGE2.BASE_LR, vit.STAGE2.MAX_EPOCHS, tuple(vit.STAGE2.STEPS)) == \
        (5e-6, 60, (30, 50))
    cnn = _load('person/cnn_clipreid.yml')
    assert (cnn.SOLVER.STAGE1.MAX_EPOCHS, cnn.SOLVER.STAGE2.BASE_LR) == (60, 0.00035)
    assert (cnn.SOLVER.STAGE2.WARMUP_FACTOR, tuple(cnn.SOLVER.STAGE2.STEPS)) == (0.01, (40, 70))
    assert cnn.MODEL.NAME == 'RN50' and list(cnn.INPUT.PIXEL_MEAN) == [0.485, 0.456, 0.406]
    vehicle = _load('vehicleid/vit_clipreid.yml')
    assert vehicle.SOLVER.STAGE1.IMS_PER_BATCH == 256 and vehicle.SOLVER.STAGE2.BASE_LR == 5e-5
    assert tuple(vehicle.INPUT.SIZE_TRAIN) == (256, 256)
    # upstream VehicleID smooths labels only for ViT CLIP-ReID
    assert [_load(f'vehicleid/{n}.yml').MODEL.IF_LABELSMOOTH
            for n in ('vit_clipreid', 'vit_base', 'cnn_base', 'cnn_clipreid')] == \
        ['on', 'off', 'off', 'off']


@pytest.mark.parametrize('folder', ['person', 'msmt17', 'veri', 'vehicleid'])
def test_sie_olp_differs_from_vit_clipreid_only_in_sie_and_stride(folder):
    plain = _flat(_load(f'{folder}/vit_clipreid.yml'))
    sie = _flat(_load(f'{folder}/vit_clipreid_sie_olp.yml'))
    diff = {k for k in plain if plain[k] != sie[k]}
    assert diff == {'MODEL.SIE_CAMERA', 'MODEL.SIE_COE', 'MODEL.STRIDE_SIZE', 'OUTPUT_DIR'}
    assert (sie['MODEL.SIE_CAMERA'], sie['MODEL.SIE_COE'], list(sie['MODEL.STRIDE_SIZE'])) == \
        (True, 1.0, [12, 12])


@pytest.mark.parametrize('variant', ['vit_base', 'vit_clipreid', 'cnn_base', 'cnn_clipreid',
                                     'vit_clipreid_sie_olp'])
def test_msmt17_configs_are_the_person_configs_on_msmt17(variant):
    person = _flat(_load(f'person/{variant}.yml'))
    msmt = _flat(_load(f'msmt17/{variant}.yml'))
    assert {k for k in person if person[k] != msmt[k]} == {'DATASETS.NAMES', 'OUTPUT_DIR'}
    duke = _load(f'person/{variant}.yml', 'DATASETS.NAMES', 'dukemtmc')  # documented override
    assert duke.DATASETS.NAMES == 'dukemtmc'


@pytest.mark.parametrize('species,protocol', [('yak', 'animal'), ('tiger', 'atrw'),
                                              ('elephant', 'animal')])
def test_animal_configs(species, protocol):
    for variant in ('vit_clipreid', 'cnn_clipreid', 'vit_clipreid_ori', 'cnn_clipreid_ori'):
        cfg = _load(f'{species}/{variant}.yml')
        d = cfg.DATASETS
        assert (d.NAMES, d.SPECIES, cfg.TEST.PROTOCOL) == ('animals', species, protocol)
        assert d.TRAIN_LIST and d.QUERY_LIST and d.GALLERY_LIST and d.TEST_ROOT_DIR
        assert d.DATA_DIR == ('Animal-2' if variant.endswith('_ori') else 'Animal-Seg-V3')
        assert bool(cfg.TEST.ATRW_ANNOTATION) == (protocol == 'atrw')
        if variant.startswith('cnn'):
            assert (cfg.SOLVER.STAGE2.MAX_EPOCHS, tuple(cfg.SOLVER.STAGE2.STEPS)) == (80, (40, 60))


def test_upstream_clipreid_yaml_loads_unchanged():
    cfg = load_config(str(UPSTREAM / 'clipreid_person_vit_clipreid.yml'))
    assert cfg.MODEL.ID_LOSS_WEIGHT == 0.25 and cfg.MODEL.NAME == 'ViT-B-16'
    assert cfg.SOLVER.STAGE1.LR_MIN == 1e-6 and cfg.SOLVER.STAGE1.WEIGHT_DECAY == 1e-4
    assert cfg.SOLVER.STAGE2.BASE_LR == 5e-6 and tuple(cfg.SOLVER.STAGE2.STEPS) == (30, 50)
    assert cfg.SOLVER.STAGE2.BIAS_LR_FACTOR == 2.0 and cfg.TEST.NECK_FEAT == 'before'
    assert cfg.DATASETS.NAMES == 'market1501'  # the default: the section is all comments


def test_upstream_pcl_yaml_loads_unchanged():
    cfg = load_config(str(UPSTREAM / 'pcl_pcl-vit.yml'))
    assert cfg.MODEL.METHOD == ''  # upstream never names it; train_pcl.py picks 'pcl'
    assert (cfg.MODEL.MEMORY_MOMENTUM, cfg.MODEL.ID_LOSS_WEIGHT, cfg.MODEL.PCL_LOSS_WEIGHT) == \
        (0.2, 0.25, 1.0)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.ITERS, tuple(cfg.SOLVER.STEPS)) == \
        (3.5e-4, 200, (30, 50))
    assert cfg.DATASETS.NAMES == 'market1501' and cfg.DATASETS.ROOT_DIR == '/home/ljc/datasets'
    assert cfg.SOLVER.WEIGHT_DECAY == 5e-4 and cfg.TEST.IMS_PER_BATCH == 64


def test_upstream_animal_yaml_loads_unchanged():
    cfg = load_config(str(UPSTREAM / 'animals_tiger_vit_clipreid.yml'))
    d = cfg.DATASETS
    assert (d.NAMES, d.SPECIES, d.DATA_DIR) == ('animals', 'tiger', 'Animal-Seg-V3')
    assert (d.ROOT_DIR, d.TEST_ROOT_DIR) == ('../data/', '../data/tiger/tiger_test_isnet_seg')
    assert cfg.OUTPUT_DIR == './output/tiger/vit' and cfg.SOLVER.STAGE1.MAX_EPOCHS == 120


@pytest.mark.parametrize('path', [p for p in CONFIGS if p.parent.name != 'demo'],
                         ids=lambda p: str(p.relative_to(ROOT / 'configs')))
def test_paper_configs_train_and_rerank_as_their_upstream_code(path):
    """fp16 autocast + GradScaler as every upstream trainer; re-ranking parameters of the
    upstream evaluation the config's family comes from."""
    cfg = load_config(str(path))
    assert cfg.SOLVER.AMP == 'fp16'
    t = cfg.TEST
    rerank = (t.RE_RANKING_K1, t.RE_RANKING_K2, t.RE_RANKING_LAMBDA)
    if path.parent.name in ('yak', 'tiger', 'elephant'):
        assert rerank == (20, 6, 0.3)  # the animal code's re_ranking defaults
        assert cfg.MODEL.PROMPT_OBJECT == 'person'  # the animal code's prompt word
        assert t.ATRW_MODE == ('animal_code' if path.parent.name == 'tiger' else 'dedup')
    else:
        assert rerank == (50, 15, 0.3)  # CLIP-ReID's / PCL-CLIP's R1_mAP_eval
        assert cfg.MODEL.PROMPT_OBJECT == ''  # the dataset's word: person or vehicle

