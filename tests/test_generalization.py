"""Generalization: evaluation on other datasets (DATASETS.TEST_NAMES), joint training over a
list of DATASETS.NAMES, and CUHK03-NP.

The generated data: market1501 with 2 cameras, msmt17 with 5 and cuhk03_np (its 2 cameras),
8 identities each (4 train, 4 test). A model trained on market1501 with SIE therefore has a
2-row camera table and meets camera ids 2..4 on msmt17.
"""
import os
import re

import pytest
import torch

from _e2e_helpers import build, config_path, demo_root, small_opts, tiny_clip, train
from _run_helpers import NAME, max_difference, run_and_kill, run_ok, state, train_opts, weights
from config import load_config
from datasets import init_dataset, make_dataloader
from datasets.demo_data import generate
from model.reid_base import ReIDModel
from processor import cli
from processor.evaluation import evaluate_sets, make_evaluators
from utils.checkpoint import save_weights
from utils.errors import ReIDError
from utils.training_log import read_metrics

JOINT = "('market1501', 'msmt17')"
SIE = 'person/vit_clipreid_sie_olp.yml'  # CLIP-ReID, SIE camera, overlapping patches
_ROOT = {}


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    """Data root: market1501 (2 cameras), msmt17 (5 cameras), cuhk03_np (2 cameras)."""
    if 'root' not in _ROOT:
        folder = str(tmp_path_factory.mktemp('generalization'))
        common = dict(ids=8, per_camera=2, size=(64, 32), seed=0)
        generate(folder, ('market1501',), cameras=2, **common)
        generate(folder, ('msmt17',), cameras=5, **common)
        generate(folder, ('cuhk03_np',), cameras=4, **common)  # written as c1 / c2
        _ROOT['root'] = folder
    return _ROOT['root']


def opts(root, clip, out, *extra):
    return small_opts(root, clip, out, 'SOLVER.IMS_PER_BATCH', 8, 'SOLVER.STAGE2.IMS_PER_BATCH', 8,
                      'DATALOADER.NUM_INSTANCE', 2, *extra)


# ----- config and registry -------------------------------------------------------------------
def test_names_take_a_string_or_a_list_and_bad_lists_stop_with_one_line(root):
    assert load_config('', ['DATASETS.NAMES', "('market1501')"]).DATASETS.NAMES == 'market1501'
    assert load_config('', ['DATASETS.NAMES', JOINT]).DATASETS.NAMES == ('market1501', 'msmt17')
    assert load_config('', ['DATASETS.TEST_NAMES', 'msmt17']).DATASETS.TEST_NAMES == ('msmt17',)
    assert load_config('').DATASETS.TEST_NAMES == ()
    with pytest.raises(ReIDError, match=r"^DATASETS.NAMES names market1501 twice: "
                                        r"\('market1501', 'Market1501'\)$"):
        init_dataset(('market1501', 'Market1501'), root=root)
    with pytest.raises(ReIDError, match=r'^DATASETS.NAMES: custom and animals would both read '
                                        r'DATASETS.TRAIN_LIST; a run takes at most one list-'
                                        r'file dataset$'):
        init_dataset(('custom', 'animals'), root=root)
    with pytest.raises(ReIDError, match=r'^DATASETS.NAMES: dukemtmc and occ_duke hold the same '
                                        r'images \(Occluded-Duke is cut from DukeMTMC-reID\)'):
        init_dataset(('occ_duke', 'market1501', 'dukemtmc'), root=root)
    for test_names, message in (
            ("('msmt17', 'nope')", r"^unknown dataset DATASETS.TEST_NAMES='nope'; known: "),
            ("('msmt17', 'MSMT17')", r"^DATASETS.TEST_NAMES names msmt17 twice: "),
            ("('animals',)", r'^DATASETS.NAMES \+ TEST_NAMES: custom and animals would both '
                             r'read DATASETS.TRAIN_LIST; ')):
        cfg = load_config('', ['DATASETS.ROOT_DIR', root, 'DATASETS.NAMES', 'custom',
                               'DATASETS.TEST_NAMES', test_names])
        with pytest.raises(ReIDError, match=message):
            make_dataloader(cfg, training=False)
    with pytest.raises(ReIDError, match=r'^command line: config key DATASETS.NAMES: expected '
                                        r'a dataset name, got \(\)$'):
        load_config('', ['DATASETS.NAMES', '()'])


# ----- joint training set ----------------------------------------------------------------------
def test_joint_set_offsets_identities_and_cameras(root, caplog):
    market, msmt = init_dataset('market1501', root=root), init_dataset('msmt17', root=root)
    with caplog.at_level('INFO', logger='reid'):
        joint = init_dataset(('market1501', 'msmt17'), root=root)
    assert (market.num_train_pids, market.num_train_cams) == (4, 2)
    assert (msmt.num_train_pids, msmt.num_train_cams) == (4, 5)
    assert joint.train[:len(market.train)] == market.train
    assert joint.train[len(market.train):] == [(p, pid + 4, cam + 2, v)
                                               for p, pid, cam, v in msmt.train]
    assert (joint.num_train_pids, joint.num_train_cams, joint.num_train_vids) == (8, 7, 1)
    assert sorted({r[1] for r in joint.train}) == list(range(8))
    # the log lists every dataset: identities, images, cameras and offsets
    assert re.search(r'market1501\s+\|\s+4 \|\s+16 \|\s+2 \|\s+0 \|\s+0\n', caplog.text)
    assert re.search(r'msmt17\s+\|\s+4 \|\s+40 \|\s+5 \|\s+4 \|\s+2\n', caplog.text)
    assert re.search(r'union\s+\|\s+8 \|\s+56 \|\s+7 \|', caplog.text)


def test_joint_pk_batches_draw_over_the_union_and_the_model_is_sized_to_it(root,
                                                                           tmp_path_factory):
    clip = tiny_clip(tmp_path_factory)
    cfg = load_config(config_path(SIE), opts(root, clip, tmp_path_factory.mktemp('joint'),
                                             'DATASETS.NAMES', JOINT))
    runtime, data, model = build(cfg)
    assert (data.num_classes, data.camera_num) == (8, 7)
    assert model.prompt_learner.cls_ctx.shape[0] == model.classifier.weight.shape[0] == 8
    assert model.cv_embed.shape[0] == 7
    sources, mixed = set(), 0
    for images, pids, camids, viewids in data.train_loader:
        kinds = {'msmt' if pid >= 4 else 'market' for pid in pids.tolist()}
        assert all((cam >= 2) == (pid >= 4) for pid, cam in zip(pids.tolist(), camids.tolist()))
        sources |= kinds
        mixed += len(kinds) == 2
    assert sources == {'market', 'msmt'} and mixed > 0
    # with TEST_NAMES empty every training dataset is evaluated, cameras as trained
    assert [(s.name, s.cam_offset) for s in data.test_sets] == [('market1501', 0), ('msmt17', 2)]
    msmt_cams = {camid for _, _, camid, _, _ in data.test_sets[1].val_loader.dataset}
    assert msmt_cams == {2, 3, 4, 5, 6}


# ----- evaluation on other datasets ------------------------------------------------------------
def run_test_main(monkeypatch, config, options, rerank=False):
    script = 'test_rerank_clipreid.py' if rerank else 'test_clipreid.py'
    monkeypatch.setattr('sys.argv', [script, '--config_file', config_path(config), *options])
    return cli.test_main('test', rerank=rerank)


@pytest.mark.parametrize('rerank', [False, True], ids=['plain', 'rerank'])
def test_transfer_equals_the_test_script_on_that_dataset_bit_exactly(
        root, tmp_path_factory, monkeypatch, rerank):
    """A CLIP-ReID SIE model of market1501 (2 cameras) scored on msmt17 (5 cameras) and on
    market1501 through TEST_NAMES, as the training loop scores it, then by the test scripts
    with each dataset as DATASETS.NAMES, and with TEST_NAMES: the same numbers, bit for bit."""
    clip = tiny_clip(tmp_path_factory, 'vit', 1)
    out = tmp_path_factory.mktemp('transfer')
    names = ('DATASETS.TEST_NAMES', "('msmt17', 'market1501')", 'TEST.RE_RANKING', rerank)
    cfg = load_config(config_path(SIE), opts(root, clip, out, *names))
    runtime, data, model = build(cfg, seed=1)
    assert model.cv_embed.shape[0] == 2 and data.per_dataset
    trained, curves = evaluate_sets(cfg, model, data, make_evaluators(cfg, data), runtime)
    per_dataset = trained.extra['datasets']
    assert list(per_dataset) == ['msmt17', 'market1501'] and trained is per_dataset['msmt17']
    assert set(curves) == {f'val/{d}/{k}' for d in per_dataset for k in trained.summary()}
    log = (out / 'train_log.txt').read_text()
    table = log[log.index('Results per dataset'):]
    rows = [line.split('INFO: ')[-1].split() for line in table.splitlines()
            if re.search(r'INFO:\s+(msmt17|market1501)\s+\|', line)]
    assert [r[0] for r in rows] == ['msmt17', 'market1501']
    def shown(result):
        return [f'{100 * v:.1f}%' for v in
                (result.mAP, *(result.metrics[f'Rank-{k}'] for k in (1, 5, 10)))]

    plain = per_dataset
    if rerank:  # the table's first columns: the same features without re-ranking
        plain_cfg = load_config(config_path(SIE), opts(root, clip, out, *names[:2]))
        plain = evaluate_sets(plain_cfg, model, data, make_evaluators(plain_cfg, data),
                              runtime)[0].extra['datasets']
    for row, result, plain_result in zip(rows, per_dataset.values(), plain.values()):
        cells = [c for c in row[1:] if c != '|']
        assert len(cells) == (8 if rerank else 4)
        assert cells[-4:] == shown(result) and cells[:4] == shown(plain_result)
    weights_path = str(out / 'model.pth')
    save_weights(model, weights_path)
    for dataset, expected in per_dataset.items():
        alone = run_test_main(monkeypatch, SIE, opts(root, clip, out, 'DATASETS.NAMES', dataset,
                                                     'TEST.WEIGHT', weights_path), rerank)
        assert alone.summary() == expected.summary(), dataset  # bit-exact
        assert alone.q_pids is not None
    listed = run_test_main(monkeypatch, SIE, opts(root, clip, out, 'TEST.WEIGHT', weights_path,
                                                  *names), rerank)
    assert {d: r.summary() for d, r in listed.extra['datasets'].items()} == \
        {d: r.summary() for d, r in per_dataset.items()}


def test_each_test_set_keeps_its_own_protocol(tmp_path_factory, monkeypatch):
    """VehicleID, ATRW (tiger, list files under ROOT_DIR) and the standard protocol in one
    TEST_NAMES run, each equal to the test script with that dataset as DATASETS.NAMES."""
    root = demo_root(tmp_path_factory, ('market1501', 'msmt17', 'vehicleid', 'animals'), ids=12)
    clip = tiny_clip(tmp_path_factory, 'vit', 1)
    out = tmp_path_factory.mktemp('protocols')
    tiger = ('DATASETS.SPECIES', 'tiger', 'DATASETS.DATA_DIR', 'animals/Animal-Seg-V3',
             'DATASETS.TEST_ROOT_DIR', 'animals/tiger_test', 'DATASETS.QUERY_LIST',
             'animals/datalist/tiger_test.txt', 'TEST.ATRW_ANNOTATION',
             f'{root}/animals/datalist/tiger_gt_test_plain.json', 'TEST.VEHICLEID_TRIALS', 2)
    config = 'person/vit_clipreid.yml'
    cfg = load_config(config_path(config), opts(
        root, clip, out, 'DATASETS.TEST_NAMES', "('VehicleID', 'animals', 'msmt17')", *tiger))
    runtime, data, model = build(cfg, seed=1)
    first, _ = evaluate_sets(cfg, model, data, make_evaluators(cfg, data), runtime)
    results = first.extra['datasets']
    assert {k: r.protocol for k, r in results.items()} == {
        'VehicleID': 'vehicleid', 'animals': 'atrw', 'msmt17': 'standard'}
    weights_path = str(out / 'model.pth')
    save_weights(model, weights_path)
    for dataset, expected in results.items():
        alone = run_test_main(monkeypatch, config, opts(
            root, clip, out, 'DATASETS.NAMES', dataset, 'TEST.WEIGHT', weights_path, *tiger))
        assert alone.summary() == expected.summary(), dataset


def test_unseen_camera_ids_get_the_mean_camera_embedding(root, tmp_path_factory):
    clip = tiny_clip(tmp_path_factory, 'vit', 1)
    cfg = load_config(config_path(SIE), opts(root, clip, tmp_path_factory.mktemp('sie')))
    _, data, model = build(cfg, seed=1)
    table, coe = model.cv_embed.detach(), model.sie_coe
    cams = torch.tensor([0, 1, 2, 4])
    model.eval()
    rows = model.sie_embedding(cam_label=cams).detach()
    assert torch.equal(rows[:2], coe * table[:2])  # trained cameras keep their rows
    assert torch.equal(rows[2], coe * table.mean(0)) and torch.equal(rows[3], rows[2])
    model.train()  # training indexes the table as always
    assert torch.equal(model.sie_embedding(cam_label=cams[:2]).detach(), coe * table[:2])
    model.eval()
    images = next(iter(data.val_loader))[0][:2]
    with torch.no_grad():
        unseen = model(images, cam_label=torch.tensor([3, 4]))
        without = model(images)
    assert not torch.allclose(unseen, without)  # SIE is applied, not left out


def test_unseen_camera_and_view_ids_get_the_mean_over_what_is_unseen():
    """SIE camera + view (a [cameras x views] table): an unseen camera takes the mean over
    cameras for its view, an unseen view the mean over views for its camera, both unseen
    the mean of the table."""
    model = ReIDModel.__new__(ReIDModel)
    torch.nn.Module.__init__(model)
    model.sie_camera = model.sie_view = True
    model.camera_num, model.view_num, model.sie_coe = 2, 3, 1.0
    model.cv_embed = torch.nn.Parameter(torch.randn(6, 4))
    grid = model.cv_embed.detach().view(2, 3, 4)
    model.eval()
    rows = model.sie_embedding(torch.tensor([1, 5, 0, 5]), torch.tensor([2, 1, 7, 7])).detach()
    assert torch.equal(rows[0], grid[1, 2]) and torch.equal(rows[1], grid[:, 1].mean(0))
    assert torch.equal(rows[2], grid[0].mean(0)) and torch.equal(rows[3], grid.mean((0, 1)))


# ----- training runs over a union --------------------------------------------------------------
def test_training_logs_a_row_per_dataset_and_curves_per_dataset(root, tmp_path_factory):
    clip = tiny_clip(tmp_path_factory)
    out = tmp_path_factory.mktemp('curves')
    cfg = load_config(config_path('pcl/market1501.yml'), opts(
        root, clip, out, 'DATASETS.NAMES', JOINT, 'DATASETS.TEST_NAMES', "('cuhk03_np',)",
        'SOLVER.MAX_EPOCHS', 1, 'SOLVER.ITERS', 2, 'SOLVER.TENSORBOARD', False))
    runtime, data, model = build(cfg)
    train(cfg, runtime, data, model)
    names = {r['name'] for r in read_metrics(str(out / 'metrics.csv')) if r['name'][:4] == 'val/'}
    assert names == {f'val/cuhk03_np/{k}' for k in ('mAP', 'Rank-1', 'Rank-5', 'Rank-10')}
    log = (out / 'train_log.txt').read_text()
    assert re.search(r'INFO:\s+cuhk03_np\s+\|\s+[\d.]+% \|', log)


@pytest.mark.parametrize('method', ['clipreid', 'baseline', 'pcl_unsup'])
def test_every_method_trains_on_a_union(root, tmp_path_factory, method):
    clip = tiny_clip(tmp_path_factory)
    out = tmp_path_factory.mktemp(method)
    config = {'clipreid': SIE, 'baseline': 'person/vit_base.yml',
              'pcl_unsup': 'pcl/market1501.yml'}[method]
    extra = ['MODEL.UNSUPERVISED', True, 'CLUSTER.MIN_SAMPLES', 2, 'CLUSTER.EPS', 0.7,
             'CLUSTER.K1', 6, 'CLUSTER.K2', 2] if method == 'pcl_unsup' else []
    cfg = load_config(config_path(config), opts(
        root, clip, out, 'DATASETS.NAMES', JOINT, 'SOLVER.STAGE1.MAX_EPOCHS', 1,
        'SOLVER.STAGE2.MAX_EPOCHS', 1, 'SOLVER.MAX_EPOCHS', 1, 'SOLVER.ITERS', 2,
        'SOLVER.TENSORBOARD', False, 'SOLVER.STAGE1.IMS_PER_BATCH', 16, *extra))
    runtime, data, model = build(cfg)
    trainer = train(cfg, runtime, data, model)
    if method == 'pcl_unsup':  # clustering ran over the union's 56 training images
        assert len(trainer.labels) == len(data.dataset.train) == 56
    rows = read_metrics(str(out / 'metrics.csv'))
    assert {'val/market1501/mAP', 'val/msmt17/mAP'} <= {r['name'] for r in rows}


def test_joint_run_resumes_exactly(tmp_path, root, tmp_path_factory):
    clip = tiny_clip(tmp_path_factory)

    def run_opts(out):  # epochs of 12 iterations: the kill lands inside epoch 2
        return train_opts((root, clip), out, 'DATASETS.NAMES', JOINT, 'SOLVER.MAX_EPOCHS', 2,
                          'SOLVER.ITERS', 12, 'SOLVER.TENSORBOARD', False)

    full, part = tmp_path / 'full', tmp_path / 'part'
    run_ok('train_pcl.py', run_opts(full))
    run_and_kill('train_pcl.py', run_opts(part), 'pcl epoch[2] iteration[1] ', tmp_path / 'err')
    assert state(part, 'pcl')['epoch'] == 1 and not os.path.exists(part / f'{NAME}_2.pth')
    out = run_ok('train_pcl.py', ['--resume', *run_opts(part)]).stdout
    assert 'resumed pcl after epoch 1' in out
    assert max_difference(weights(part, 2), weights(full, 2)) == 0.0
    assert weights(full, 2)['classifier.weight'].shape[0] == 8  # the union's identities


# ----- CUHK03-NP -------------------------------------------------------------------------------
@pytest.mark.parametrize('variant', ['labeled', 'detected'])
def test_cuhk03_np_loads_both_variants(root, variant):
    dataset = init_dataset('cuhk03_np', root=root, cuhk03_variant=variant)
    assert dataset.statistics() == {'train': (4, 32, 2), 'query': (4, 8, 2),
                                    'gallery': (4, 24, 2)}
    assert dataset.train[0][0].endswith(f'cuhk03-np/{variant}/bounding_box_train/0001_c1_1.png')
    assert dataset.query[0][1:] == (1001, 0, 0)


def test_cuhk03_np_bad_variant_is_named(root):
    cfg = load_config('', ['DATASETS.ROOT_DIR', root, 'DATASETS.NAMES', 'cuhk03_np',
                           'DATASETS.CUHK03_VARIANT', 'manual'])
    with pytest.raises(ReIDError, match=r"^DATASETS.CUHK03_VARIANT must be 'labeled' or "
                                        r"'detected', got 'manual'$"):
        make_dataloader(cfg, training=False)


def test_joint_run_under_torchrun_equals_one_process(tmp_path, root, tmp_path_factory):
    """Two gloo processes train and evaluate the union as one process does (the settings of
    tests/test_distributed.py that make the two runs comparable)."""
    clip = tiny_clip(tmp_path_factory)
    exact = ('MODEL.NECK', 'no', 'MODEL.TRIPLET_LOSS_WEIGHT', 0, 'SOLVER.OPTIMIZER_NAME', 'SGD',
             'SOLVER.BASE_LR', 0.05, 'SOLVER.TENSORBOARD', False, 'DATASETS.NAMES', JOINT,
             'DATASETS.TEST_NAMES', "('msmt17', 'cuhk03_np')", 'SOLVER.MAX_EPOCHS', 1)
    for name, nproc in (('single', 0), ('ddp', 2)):
        run_ok('train_pcl.py', train_opts((root, clip), tmp_path / name, *exact), nproc=nproc)
    single, ddp = str(tmp_path / 'single'), str(tmp_path / 'ddp')
    assert max_difference(weights(single, 1), weights(ddp, 1)) < 1e-5
    tables = [[line.split('INFO: ')[1] for line in open(os.path.join(out, 'train_log.txt'))
               if re.search(r'INFO:\s+(msmt17|cuhk03_np)\s+\|', line)] for out in (single, ddp)]
    assert len(tables[0]) == 2 and tables[0] == tables[1]


# ----- shipped configs -------------------------------------------------------------------------
GENERALIZATION = sorted(p for p in os.listdir(config_path('generalization')) if p.endswith('.yml'))


def test_generalization_configs_cover_the_protocols():
    expected = {f'{m}_{p}.yml' for m in ('clipreid', 'pcl') for p in (
        'market1501_to_msmt17', 'msmt17_to_market1501', 'loo_to_market1501', 'loo_to_msmt17',
        'loo_to_cuhk03_np')}
    assert set(GENERALIZATION) == expected
    for config in ('cuhk03_np/vit_clipreid.yml', 'cuhk03_np/vit_base.yml', 'pcl/cuhk03_np.yml'):
        assert load_config(config_path(config)).DATASETS.NAMES == 'cuhk03_np'


@pytest.mark.parametrize('config', GENERALIZATION)
def test_generalization_config_builds_its_train_and_test_sets(root, tmp_path_factory, config):
    clip = tiny_clip(tmp_path_factory)
    cfg = load_config(config_path(f'generalization/{config}'),
                      opts(root, clip, tmp_path_factory.mktemp('cfg'), 'SOLVER.IMS_PER_BATCH', 8))
    method, protocol = config[:-4].split('_', 1)
    target = protocol.split('_to_')[1]
    names = [cfg.DATASETS.NAMES] if isinstance(cfg.DATASETS.NAMES, str) else cfg.DATASETS.NAMES
    assert cfg.DATASETS.TEST_NAMES[0] == target and target not in names
    assert len(names) == (2 if protocol.startswith('loo') else 1)
    header = open(config_path(f'generalization/{config}')).read().split('\nMODEL:')[0]
    if protocol.startswith('loo'):
        assert 'CUHK-SYSU' in header and '51.6 | 65.1' in header and 'not found' in header
    else:
        assert 'not found' in header
    data = make_dataloader(cfg)
    assert [s.name for s in data.test_sets] == list(cfg.DATASETS.TEST_NAMES)
    assert data.num_classes == 4 * len(names)


def test_negative_identities_are_not_shifted_into_another_dataset():
    from datasets.joint import shift
    records = [('a.jpg', 3, 1, 0), ('junk.jpg', -1, 0, 0)]
    assert shift(records, 100, 6) == [('a.jpg', 103, 7, 0), ('junk.jpg', -1, 6, 0)]
