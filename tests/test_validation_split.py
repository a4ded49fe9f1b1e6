"""DATASETS.VAL_IDENTITIES: identities held out of training as a validation split.

Demo data here: 16 identities per layout, 3 cameras, 2 images per identity and camera, so
every training set has 8 identities of 6 images, each seen by all 3 cameras (animals and
VehicleID: camera 0 only).
"""
import collections
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _data_fixtures import make_cfg
from config import load_config
from datasets import init_dataset, make_dataloader
from datasets.demo_data import generate
from datasets.make_dataloader import needs_training_set
from datasets.validation import hold_out_identities, without_held_out
from loss import compute_centroids
from model import make_model
from model.tiny_clip import save_tiny_clip
from utils.errors import ReIDError
from utils.metrics import make_evaluator

IDS, IMAGES = 8, 6  # training identities of every layout, images per identity
YAK = ('DATASETS.NAMES', 'animals', 'DATASETS.SPECIES', 'yak',
       'DATASETS.DATA_DIR', 'Animal-Seg-V3', 'DATASETS.TEST_ROOT_DIR', 'yak_test',
       'DATASETS.TRAIN_LIST', 'datalist/yak_train.txt',
       'DATASETS.QUERY_LIST', 'datalist/yak_probe.txt',
       'DATASETS.GALLERY_LIST', 'datalist/yak_gallery.txt')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp('val_split')
    generate(str(folder), layouts=('market1501', 'msmt17', 'vehicleid', 'animals'), ids=16,
             cameras=3, per_camera=2, size=(64, 32), seed=5, species=('yak', 'tiger'))
    return str(folder)


def cfg_for(root, *opts):
    return make_cfg(root, *opts)


def yak_cfg(root, *opts):
    return make_cfg(f'{root}/animals', *YAK, *opts)


def paths(records):
    return [r[0] for r in records]


def held_out_records(full, val):
    """The full training set's records of the held-out identities."""
    return [r for r in full.train if r[1] in set(val.held_out)]


# ----------------------------------------------------------------- training never sees them
def test_held_out_identities_are_in_no_training_batch_nor_memory_row(root):
    cfg = cfg_for(root, 'DATASETS.VAL_IDENTITIES', 3, 'SOLVER.SEED', 7)
    data = make_dataloader(cfg)
    full = make_dataloader(cfg_for(root, 'SOLVER.SEED', 7)).dataset
    (val_set,) = data.val_sets
    val = val_set.dataset
    held = set(paths(held_out_records(full, val)))
    assert len(val.held_out) == 3 and len(held) == 3 * IMAGES
    assert set(paths(val.query + val.gallery)) == held
    # the training records are the others, relabelled 0..4 keeping their order
    kept = [r for r in full.train if r[1] not in set(val.held_out)]
    assert paths(data.dataset.train) == paths(kept)
    old_to_new = {old[1]: new[1] for old, new in zip(kept, data.dataset.train)}
    assert sorted(old_to_new) == sorted(set(range(IDS)) - set(val.held_out))
    assert [old_to_new[k] for k in sorted(old_to_new)] == list(range(IDS - 3))
    assert data.num_classes == data.dataset.num_train_pids == IDS - 3
    assert data.camera_num == full.num_train_cams  # the full camera table
    # a full epoch of PK batches: records read and labels delivered
    loader = data.train_loader
    assert not held & set(paths(loader.dataset.records))
    drawn = [loader.dataset.records[i] for i, _ in loader.sampler]
    assert not held & set(paths(drawn))
    assert {r[1] for r in drawn} == set(range(IDS - 3))
    labels = torch.cat([batch[1] for batch in loader]).tolist()
    assert labels == [r[1] for r in drawn]
    # the PCL memory / CLIP-ReID cache / clustering loader: the kept records, in order
    memory_loader = data.train_eval_loader
    assert memory_loader.dataset.records == data.dataset.train
    pids = torch.cat([batch[1] for batch in memory_loader])
    assert pids.tolist() == [r[1] for r in data.dataset.train]
    feats = torch.randn(len(pids), 8, generator=torch.Generator().manual_seed(0))
    memory = compute_centroids(feats, pids, data.num_classes)  # what PCLTrainer builds
    assert memory.shape == (IDS - 3, 8) and bool((memory.norm(dim=1) > 0.99).all())


def test_classifier_and_prompts_are_sized_without_held_out(root, tmp_path):
    clip = str(save_tiny_clip(tmp_path / 'clip.pt', 'vit'))
    data = make_dataloader(cfg_for(root, 'DATASETS.VAL_IDENTITIES', 2))
    assert data.num_classes == IDS - 2
    for method in ('clipreid', 'pcl'):
        cfg = load_config('', ['MODEL.PRETRAIN_PATH', clip, 'MODEL.METHOD', method,
                               'INPUT.SIZE_TRAIN', '[128, 64]', 'INPUT.SIZE_TEST', '[128, 64]'])
        model = make_model(cfg, data.num_classes, data.camera_num, data.view_num,
                           object_word=data.dataset.object_word)
        state = model.state_dict()
        assert state['classifier.weight'].shape[0] == IDS - 2
        if method == 'clipreid':
            assert state['prompt_learner.cls_ctx'].shape[0] == IDS - 2


def test_unsupervised_clustering_never_sees_held_out_images(root):
    data = make_dataloader(cfg_for(root, 'DATASETS.VAL_IDENTITIES', 2, 'MODEL.UNSUPERVISED',
                                   True, 'MODEL.METHOD', 'pcl'))
    val = data.val_sets[0].dataset
    assert data.train_loader is None and data.num_classes == 1
    assert len(data.dataset.train) == (IDS - 2) * IMAGES
    assert not set(paths(val.query + val.gallery)) & set(paths(data.train_eval_loader.dataset.records))
    assert data.train_eval_loader.dataset.records == data.dataset.train


# ----------------------------------------------------------------- the draw and the split
def test_draw_is_deterministic_by_seed(root):
    full = init_dataset('market1501', root=root, verbose=False)
    draws = {seed: hold_out_identities(full, 3, seed) for seed in range(8)}
    again = hold_out_identities(full, 3, 5)
    assert again[0] == draws[5][0] and again[1].held_out == draws[5][1].held_out
    assert paths(again[1].query) == paths(draws[5][1].query)
    assert len({tuple(v.held_out) for _, v in draws.values()}) > 1  # the seed matters
    data = make_dataloader(cfg_for(root, 'DATASETS.VAL_IDENTITIES', 3, 'SOLVER.SEED', 5))
    assert data.val_sets[0].dataset.held_out == draws[5][1].held_out
    assert data.dataset.train == draws[5][0]


def test_query_is_one_image_per_identity_and_camera(root):
    full = init_dataset('market1501', root=root, verbose=False)
    _, val = hold_out_identities(full, 4, 11)
    held = held_out_records(full, val)
    assert val.protocol == 'standard' and not val.single_camera and val.name == 'validation'
    pairs = collections.Counter((r[1], r[2]) for r in val.query)
    assert set(pairs.values()) == {1} and set(pairs) == {(r[1], r[2]) for r in held}
    assert len(val.query) == 4 * 3 and len(val.gallery) == 4 * 3  # 3 cameras x (2 - 1)
    assert not set(paths(val.query)) & set(paths(val.gallery))
    assert sorted(val.query + val.gallery) == sorted(held)


def test_only_identities_that_keep_a_match_for_every_query_can_be_held_out():
    # cameras (images): 0: one camera; 1: two cameras of one image; 2: {1: 1, 2: 2}, whose
    # camera-2 query would meet only its own camera; 3, 4, 5: 2+ images in 2+ cameras
    counts = {0: {0: 2}, 1: {0: 1, 1: 1}, 2: {1: 1, 2: 2}, 3: {0: 2, 2: 2},
              4: {0: 2, 1: 2, 2: 1}, 5: {1: 2, 2: 2}}
    train = [(f'{pid}_{cam}_{i}', pid, cam, 0) for pid, cams in counts.items()
             for cam, n in cams.items() for i in range(n)]
    ds = SimpleNamespace(train=train, protocol='standard', object_word='person',
                         num_train_cams=3, num_train_vids=1)
    for seed in range(10):
        kept, val = hold_out_identities(ds, 2, seed)
        assert set(val.held_out) <= {3, 4, 5} and len(val.held_out) == 2
        assert kept[:7] == [r for r in train if r[1] in (0, 1, 2)]
        assert sorted({r[1] for r in kept}) == [0, 1, 2, 3]
        for _, pid, cam, _ in val.query:  # a gallery match in another camera, always
            assert any(g[1] == pid and g[2] != cam for g in val.gallery)
    with pytest.raises(ReIDError, match=r'DATASETS.VAL_IDENTITIES is 4 but only 3 of the 6 '
                                        r'training identities are seen by 2 or more cameras '
                                        r'with 2 or more images each'):
        hold_out_identities(ds, 4, 0)
    two = SimpleNamespace(**{**vars(ds), 'train': [r for r in train if r[1] in (3, 5)]})
    with pytest.raises(ReIDError, match=r'DATASETS.VAL_IDENTITIES is 1: it would leave 1 of '
                                        r'the 2 training identities'):
        hold_out_identities(two, 1, 0)
    reduced = without_held_out(ds, kept)
    assert reduced.num_train_pids == 4 and ds.train == train and reduced.num_train_cams == 3


def test_too_many_identities_stop_with_one_line(root):
    with pytest.raises(ReIDError, match=r'^DATASETS.VAL_IDENTITIES is 9 but only 8 of the 8 '):
        make_dataloader(cfg_for(root, 'DATASETS.VAL_IDENTITIES', 9))
    with pytest.raises(ReIDError, match='it would leave 1 of the 8 training identities'):
        make_dataloader(cfg_for(root, 'DATASETS.VAL_IDENTITIES', 7))
    with pytest.raises(ReIDError, match='DATASETS.VAL_IDENTITIES must be 0 or more, not -1'):
        cfg_for(root, 'DATASETS.VAL_IDENTITIES', -1)


def test_zero_is_todays_bundle(root):
    plain, zero = make_dataloader(cfg_for(root)), make_dataloader(
        cfg_for(root, 'DATASETS.VAL_IDENTITIES', 0))
    assert zero.val_sets == [] and plain.val_sets == []
    assert zero.dataset.train == plain.dataset.train and zero.dataset is not None
    assert zero.num_classes == plain.num_classes == IDS
    assert zero.train_eval_loader.dataset.records == plain.dataset.train
    assert list(zero.train_loader.sampler) == list(plain.train_loader.sampler)
    assert [(s.name, s.num_query) for s in zero.test_sets] == [('market1501', 16)]


# ----------------------------------------------------------------- evaluation of the split
def evaluate(cfg, val_set, seed=0):
    """A real evaluator over the validation loader, on random features."""
    evaluator = make_evaluator(cfg, val_set.num_query, val_set.dataset.protocol)
    evaluator.ap_mode = val_set.dataset.ap_mode
    gen = torch.Generator().manual_seed(seed)
    seen = []
    for _, pids, camids, _, batch_paths in val_set.val_loader:
        evaluator.update((torch.randn(len(pids), 16, generator=gen), pids, camids, batch_paths))
        seen += batch_paths
    assert seen == paths(val_set.dataset.query + val_set.dataset.gallery)
    return evaluator.compute()


def test_multi_camera_split_evaluates_every_query(root, caplog):
    cfg = cfg_for(root, 'DATASETS.VAL_IDENTITIES', 2)
    with caplog.at_level('INFO', logger='reid'):
        (val_set,) = make_dataloader(cfg).val_sets
    lines = [r.getMessage() for r in caplog.records if 'VAL_IDENTITIES' in r.getMessage()]
    assert lines == ['validation split (DATASETS.VAL_IDENTITIES): 2 identities held out '
                     '(SOLVER.SEED 1234): query 6 images, gallery 6 images, standard protocol; '
                     '6 identities train']
    assert (val_set.name, val_set.num_query, val_set.cam_offset) == ('validation', 6, 0)
    result = evaluate(cfg, val_set)
    assert result.protocol == 'standard' and result.skipped_queries == 0
    assert np.isfinite(result.mAP) and 0 < result.mAP <= 1


def test_single_camera_animals_use_the_animal_protocol(root):
    cfg = yak_cfg(root, 'DATASETS.VAL_IDENTITIES', 3)
    data = make_dataloader(cfg)
    (val_set,) = data.val_sets
    val = val_set.dataset
    assert (val.protocol, val.single_camera, val.ap_mode) == ('animal', True, 'trapezoid')
    assert data.num_classes == IDS - 3 and data.dataset.protocol == 'animal'
    assert collections.Counter(r[1] for r in val.query) == {p: 1 for p in val.held_out}
    assert len(val.gallery) == 3 * (IMAGES - 1)
    assert not set(paths(val.query)) & set(paths(val.gallery))
    result = evaluate(cfg, val_set)
    assert result.protocol == 'animal' and result.skipped_queries == 0
    assert np.isfinite(result.mAP) and result.ap_mode == 'trapezoid'


def test_single_camera_vehicleid_scores_standard_ap(root):
    cfg = cfg_for(root, 'DATASETS.NAMES', 'VehicleID', 'DATASETS.VAL_IDENTITIES', 2)
    data = make_dataloader(cfg)
    val = data.val_sets[0].dataset
    assert (val.protocol, val.ap_mode) == ('animal', 'standard')
    assert data.dataset.protocol == 'vehicleid'  # the test split keeps its own protocol
    assert len(val.query) == 2
    result = evaluate(cfg, data.val_sets[0])
    assert result.skipped_queries == 0 and np.isfinite(result.mAP)


def test_tiger_splits_by_the_one_camera_rule(root):
    cfg = make_cfg(f'{root}/animals', 'DATASETS.NAMES', 'animals', 'DATASETS.SPECIES', 'tiger',
                   'DATASETS.TEST_ROOT_DIR', 'tiger_test',
                   'DATASETS.TRAIN_LIST', 'datalist/tiger_train.txt',
                   'DATASETS.QUERY_LIST', 'datalist/tiger_test.txt',
                   'DATASETS.VAL_IDENTITIES', 2)
    val = make_dataloader(cfg).val_sets[0].dataset
    assert (val.protocol, val.single_camera, len(val.query)) == ('animal', True, 2)


def test_joint_sets_draw_over_the_union(root):
    cfg = cfg_for(root, 'DATASETS.NAMES', "('market1501', 'msmt17')",
                  'DATASETS.VAL_IDENTITIES', 10)
    data = make_dataloader(cfg)
    val = data.val_sets[0].dataset
    assert data.num_classes == 2 * IDS - 10 and len(data.dataset.train) == 6 * IMAGES
    assert {p < IDS for p in val.held_out} == {True, False}  # from both datasets
    assert data.camera_num == 6 and len({r[2] for r in val.query}) == 6
    assert [s.name for s in data.test_sets] == ['market1501', 'msmt17']


def test_evaluation_only_builds_the_split(root):
    cfg = cfg_for(root, 'DATASETS.TEST_NAMES', "('VehicleID',)", 'DATASETS.VAL_IDENTITIES', 2)
    assert needs_training_set(cfg, training=False)
    assert not needs_training_set(cfg_for(root, 'DATASETS.TEST_NAMES', "('VehicleID',)"), False)
    data = make_dataloader(cfg, training=False)
    assert data.train_loader is None and data.train_eval_loader is None
    assert data.num_classes == IDS - 2 and len(data.val_sets) == 1
    assert [s.name for s in data.test_sets] == ['VehicleID']
    trained = make_dataloader(cfg_for(root, 'DATASETS.VAL_IDENTITIES', 2))
    assert data.val_sets[0].dataset.held_out == trained.val_sets[0].dataset.held_out


def test_a_union_s_camera_count_picks_the_rule_whatever_its_first_part():
    from datasets.joint import JointDataset
    from datasets.validation import is_single_camera
    union = JointDataset.__new__(JointDataset)  # yak first (protocol 'animal'), then Market
    union.train = [('y0', 0, 0, 0), ('m0', 1, 3, 0), ('m1', 1, 4, 0)]
    union.protocol = 'animal'
    assert not is_single_camera(union)
    assert is_single_camera(SimpleNamespace(train=union.train, protocol='animal'))
