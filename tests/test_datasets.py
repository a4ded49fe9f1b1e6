"""Dataset loaders on generated data: statistics, relabelling, protocols and clear errors."""
import logging
import os
import shutil

import pytest
import torch

from _data_fixtures import (ANIMAL_LISTS, CUSTOM_LISTS, GALLERY, QUERY, TRAIN, as_tuple,
                            copy_layout, demo, make_cfg)  # noqa: F401 (fixture)
from datasets import DATASET_REGISTRY, ImageDataset, build_transforms, init_dataset
from utils.errors import ReIDError

STANDARD = [('market1501', {}), ('dukemtmc', {}), ('occ_duke', {}), ('msmt17', {}),
            ('veri', {}), ('custom', CUSTOM_LISTS)]
ROOT_SUFFIX = {'custom': '/custom', 'animals': '/animals'}


def load(demo_root, name, **kwargs):
    return init_dataset(name, root=demo_root + ROOT_SUFFIX.get(name, ''), **kwargs)


def check_train_records(ds, num_pids, num_cams):
    pids = sorted({r[1] for r in ds.train})
    assert pids == list(range(num_pids)) and ds.num_train_pids == num_pids
    cams = {r[2] for r in ds.train + ds.query + ds.gallery}
    assert min(cams) == 0 and ds.num_train_cams == num_cams == max(cams) + 1


@pytest.mark.parametrize('name,kwargs', STANDARD)
def test_standard_loaders_match_what_was_generated(demo, name, kwargs, caplog):
    root, counts = demo
    key = 'vehicleid' if name == 'VehicleID' else name
    with caplog.at_level(logging.INFO, logger='reid'):
        ds = load(root, name, **kwargs)
    stats = ds.statistics()
    extra = 1 if name == 'market1501' else 0  # the distractor identity 0
    more = counts[key].get('distractors', 0)
    assert as_tuple(counts[key]['train']) == TRAIN == stats['train']
    assert as_tuple(counts[key]['query']) == QUERY == stats['query']
    assert as_tuple(counts[key]['gallery']) == GALLERY
    assert stats['gallery'] == (GALLERY[0] + extra, GALLERY[1] + more, GALLERY[2])
    check_train_records(ds, 3, 3)
    assert ds.protocol == 'standard' and ds.num_train_vids == 1
    assert all(r[3] == 0 for r in ds.train + ds.query + ds.gallery)
    assert 'train    |     3 |       18 |         3' in caplog.text


def test_market_junk_dropped_and_distractors_kept_in_gallery_only(demo):
    root, counts = demo
    assert counts['market1501']['junk'] == 3 and counts['market1501']['distractors'] == 4
    files = os.listdir(f'{root}/Market-1501-v15.09.15/bounding_box_test')
    assert sum(f.startswith('-1_') for f in files) == 3
    ds = load(root, 'market1501')
    assert sum(r[1] == 0 for r in ds.gallery) == 4
    assert all(r[1] != -1 for r in ds.train + ds.query + ds.gallery)
    assert all(r[1] != 0 for r in ds.query)
    # query and gallery keep their dataset pids (sparse, even numbers for the test ids)
    assert sorted({r[1] for r in ds.query}) == [2, 4, 6]


def test_msmt17_train_is_list_train_plus_list_val_and_v2_layout_loads(demo, tmp_path):
    root, counts = demo
    assert counts['msmt17']['val'] == 3
    with open(f'{root}/MSMT17/list_train.txt') as f:
        assert len(f.read().split('\n')) - 1 == 15
    ds = load(root, 'msmt17')
    first = ds.train[0][0]
    assert os.path.basename(first).split('_')[2] == '01' and ds.train[0][2] == 0
    new_root = copy_layout(root, 'MSMT17', tmp_path)
    os.rename(f'{new_root}/MSMT17', f'{new_root}/MSMT17_V2')
    base = f'{new_root}/MSMT17_V2'
    os.rename(f'{base}/train', f'{base}/mask_train_v2')
    os.rename(f'{base}/test', f'{base}/mask_test_v2')
    v2 = init_dataset('msmt17', root=new_root)
    assert v2.statistics() == ds.statistics()
    assert v2.train[0][0].endswith('mask_train_v2/' + first.split('/train/')[1])


def test_veri_viewpoints_from_keypoint_files(demo):
    root, counts = demo
    ds = load(root, 'veri', view_labels='VeRi/keypoint_train.txt, VeRi/keypoint_test.txt')
    assert ds.statistics() == {'train': TRAIN, 'query': QUERY, 'gallery': GALLERY}
    # the generator gives camera c, image k the view (2c + k) % 8: views 0..5 here
    assert counts['veri']['train_views'] == 6 and ds.num_train_vids == 6
    for path, _, camid, viewid in ds.train:
        assert viewid in (2 * camid, 2 * camid + 1)
    assert ds.object_word == 'vehicle'


@pytest.mark.parametrize('size,ids', [(800, 1), (1600, 2), (2400, 3)])
def test_vehicleid_query_is_the_whole_test_list(demo, size, ids):
    root, counts = demo
    ds = load(root, 'VehicleID', test_size=size)
    assert as_tuple(counts['vehicleid'][f'test_{size}']) == (ids, 6 * ids, 1)
    assert ds.statistics()['query'] == (ids, 6 * ids, 1) and ds.gallery == []
    assert ds.statistics()['train'] == (3, 18, 1) and ds.protocol == 'vehicleid'
    check_train_records(ds, 3, 1)


def test_animals_query_is_part_of_the_gallery(demo):
    root, counts = demo
    ds = load(root, 'animals', **ANIMAL_LISTS)
    assert ds.statistics() == {'train': (3, 18, 1), 'query': (3, 6, 1), 'gallery': (3, 18, 1)}
    assert as_tuple(counts['animals']['yak']['gallery']) == (3, 18, 1)
    assert {r[0] for r in ds.query} <= {r[0] for r in ds.gallery}
    assert ds.protocol == 'animal' and ds.object_word == 'yak'
    check_train_records(ds, 3, 1)


def test_tiger_uses_the_atrw_protocol_with_optional_labels(demo, tmp_path):
    root, _ = demo
    kwargs = dict(ANIMAL_LISTS, species='tiger', test_root='tiger_test',
                  train_list='datalist/tiger_train.txt', query_list='datalist/tiger_test.txt')
    ds = load(root, 'animals', **kwargs)
    assert ds.protocol == 'atrw' and ds.gallery == [] and ds.object_word == 'tiger'
    assert ds.statistics()['query'] == (3, 18, 1)
    unlabelled = tmp_path / 'names.txt'
    unlabelled.write_text('000018.jpg\n000019.jpg\n')
    ds = load(root, 'animals', **dict(kwargs, query_list=str(unlabelled)))
    assert [r[1] for r in ds.query] == [-1, -1]


def test_registry_and_upstream_folder_spellings(demo, tmp_path):
    root, _ = demo
    assert set(DATASET_REGISTRY) >= {'market1501', 'dukemtmc', 'occ_duke', 'msmt17', 'veri',
                                     'VehicleID', 'animals', 'custom'}
    new_root = copy_layout(root, 'VeRi', tmp_path)
    os.rename(f'{new_root}/VeRi', f'{new_root}/VeRi-776')
    assert init_dataset('VERI', root=new_root).statistics()['train'] == TRAIN
    with pytest.raises(ReIDError, match="unknown dataset DATASETS.NAMES='nope'"):
        init_dataset('nope', root=root)


def test_missing_folder_is_named(demo, tmp_path):
    root, _ = demo
    with pytest.raises(ReIDError, match='Market-1501-v15.09.15'):
        init_dataset('market1501', root=str(tmp_path))
    new_root = copy_layout(root, 'Market-1501-v15.09.15', tmp_path)
    shutil.rmtree(f'{new_root}/Market-1501-v15.09.15/query')
    with pytest.raises(ReIDError, match=r'missing folder: .*Market-1501-v15.09.15/query$'):
        init_dataset('market1501', root=new_root)


def test_unparseable_file_name_is_named(demo, tmp_path):
    new_root = copy_layout(demo[0], 'VeRi', tmp_path)
    os.rename(f'{new_root}/VeRi/image_train/0001_c001_00000000_0.jpg',
              f'{new_root}/VeRi/image_train/car_one.jpg')
    with pytest.raises(ReIDError, match=r'cannot parse file name .*image_train/car_one.jpg'):
        init_dataset('veri', root=new_root)


def test_unparseable_list_line_names_file_and_line(demo, tmp_path):
    root = copy_layout(demo[0], 'custom', tmp_path) + '/custom'
    with open(f'{root}/query.txt') as f:
        lines = f.read().splitlines()
    lines[2] = lines[2].split()[0] + ' seven'
    with open(f'{root}/query.txt', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with pytest.raises(ReIDError, match=r"query.txt, line 3: pid 'seven' is not an integer"):
        init_dataset('custom', root=root, **CUSTOM_LISTS)
    with pytest.raises(ReIDError, match='DATASETS.TRAIN_LIST is not set'):
        init_dataset('custom', root=root, **dict(CUSTOM_LISTS, train_list=''))


def test_empty_split_is_named(demo, tmp_path):
    new_root = copy_layout(demo[0], 'Market-1501-v15.09.15', tmp_path)
    query = f'{new_root}/Market-1501-v15.09.15/query'
    for name in os.listdir(query):
        os.remove(f'{query}/{name}')
    with pytest.raises(ReIDError, match=r'the query split is empty .*Market-1501-v15.09.15/query'):
        init_dataset('market1501', root=new_root)


def damage(path, how):
    if how == 'truncated':
        with open(path, 'rb') as f:
            head = f.read(300)
        with open(path, 'wb') as f:
            f.write(head)
    else:
        with open(path, 'wb') as f:
            f.write(b'not an image at all')


def test_bad_image_error_names_the_file(demo, tmp_path):
    new_root = copy_layout(demo[0], 'Market-1501-v15.09.15', tmp_path)
    ds = init_dataset('market1501', root=new_root)
    damage(ds.train[0][0], 'truncated')
    data = ImageDataset(ds.train, build_transforms(make_cfg(new_root), is_train=True))
    with pytest.raises(ReIDError, match='cannot read image .*' + os.path.basename(ds.train[0][0])):
        data[0]
    damage(ds.query[0][0], 'garbage')
    with pytest.raises(ReIDError, match='cannot read image .*' + os.path.basename(ds.query[0][0])):
        ImageDataset(ds.query)[0]


def test_bad_images_are_skipped_and_counted(demo, tmp_path, caplog):
    new_root = copy_layout(demo[0], 'Market-1501-v15.09.15', tmp_path)
    ds = init_dataset('market1501', root=new_root)
    first_pid = [r[0] for r in ds.train if r[1] == 0]  # every image of train identity 0
    for path in first_pid:
        damage(path, 'truncated')
    damage(ds.gallery[-1][0], 'garbage')
    with caplog.at_level(logging.WARNING, logger='reid'):
        ds = init_dataset('market1501', root=new_root, on_bad_image='skip')
    assert ds.num_skipped == 7
    assert ds.statistics()['train'] == (2, 12, 3) and ds.statistics()['gallery'][1] == 15
    assert sorted({r[1] for r in ds.train}) == [0, 1]  # relabelled after skipping
    assert 'skipped 6 unreadable train images' in caplog.text
    assert 'skipped 1 unreadable gallery images' in caplog.text
    with pytest.raises(ReIDError, match="ON_BAD_IMAGE must be 'error' or 'skip'"):
        init_dataset('market1501', root=new_root, on_bad_image='ignore')


def test_image_dataset_items_and_transforms(demo):
    root, _ = demo
    ds = load(root, 'market1501')
    cfg = make_cfg(root)
    train = ImageDataset(ds.train, build_transforms(cfg, is_train=True))
    img, pid, camid, viewid = train[0]
    assert img.shape == (3, 64, 32) and img.dtype == torch.float32
    assert (pid, camid, viewid) == ds.train[0][1:]
    test = ImageDataset(ds.query, build_transforms(cfg, is_train=False), with_path=True)
    item = test[1]
    assert len(item) == 5 and item[4] == ds.query[1][0] and item[0].shape == (3, 64, 32)
    assert torch.equal(test[1][0], item[0])  # the test transform is deterministic
