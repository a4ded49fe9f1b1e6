"""Shared fixtures of the data-layer tests: one small generated copy of every demo layout.

With SPEC (6 identities, 3 cameras, 2 images per identity per camera, 2 query cameras) the
hand-worked split sizes are: train 3 ids x 6 = 18 images, 3 cameras; query 3 ids x 2 = 6
images, 2 cameras; gallery 3 ids x (6 - 2) = 12 images, 3 cameras.
"""
import shutil

import pytest

from config import load_config
from datasets.demo_data import LAYOUTS, generate

SPEC = dict(ids=6, cameras=3, per_camera=2, size=(64, 32), seed=3)
TRAIN, QUERY, GALLERY = (3, 18, 3), (3, 6, 2), (3, 12, 3)  # (ids, images, cameras)
ANIMAL_LISTS = dict(data_dir='Animal-Seg-V3', test_root='yak_test',
                    train_list='datalist/yak_train.txt', query_list='datalist/yak_probe.txt',
                    gallery_list='datalist/yak_gallery.txt', species='yak')
CUSTOM_LISTS = dict(train_list='train.txt', query_list='query.txt', gallery_list='gallery.txt')


@pytest.fixture(scope='session')
def demo(tmp_path_factory):
    """(root, counts returned by the generator) with every layout written."""
    root = tmp_path_factory.mktemp('demo')
    return str(root), generate(str(root), layouts=tuple(LAYOUTS), **SPEC)


def copy_layout(demo_root, folder, tmp_path):
    """A private copy of one layout folder (for tests that damage files); returns the new root."""
    shutil.copytree(f'{demo_root}/{folder}', tmp_path / folder)
    return str(tmp_path)


def as_tuple(counts):
    return counts['ids'], counts['images'], counts['cams']


def make_cfg(root, *opts):
    """A frozen config for the demo data: small images, no workers, small batches."""
    base = ['DATASETS.ROOT_DIR', root, 'DATALOADER.NUM_WORKERS', '0',
            'INPUT.SIZE_TRAIN', '[64, 32]', 'INPUT.SIZE_TEST', '[64, 32]', 'INPUT.PADDING', '2',
            'DATALOADER.SAMPLER', 'softmax_triplet', 'DATALOADER.NUM_INSTANCE', '2',
            'SOLVER.IMS_PER_BATCH', '4', 'TEST.IMS_PER_BATCH', '5']
    return load_config('', base + [str(o) for o in opts])
