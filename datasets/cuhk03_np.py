"""CUHK03-NP: CUHK03 (Li et al., CVPR 2014) in the new protocol of Zhong et al. (CVPR 2017,
github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP): 767 training and 700 test
identities, one query image per test identity and camera.

Layout under DATASETS.ROOT_DIR: cuhk03-np/{labeled, detected}/{bounding_box_train, query,
bounding_box_test}/<pid>_c<cam>_<n>.png, e.g. 0001_c1_1.png (cameras 1 and 2: the two views of
each camera pair). DATASETS.CUHK03_VARIANT picks 'labeled' (hand-drawn boxes; 7368 train,
1400 query, 5328 gallery images) or 'detected' (DPM boxes; 7365 / 1400 / 5332).
"""
import os.path as osp

from utils.errors import ReIDError

from .bases import ReIDDataset
from .parsing import find_dataset_dir, parse_folder

VARIANTS = ('labeled', 'detected')


class CUHK03NP(ReIDDataset):
    folder_names = ('cuhk03-np', 'cuhk03np', 'CUHK03-NP', 'cuhk03_np')
    name_example = '0001_c1_1.png'

    def __init__(self, root='', verbose=True, on_bad_image='error', cuhk03_variant='labeled',
                 **kwargs):
        if cuhk03_variant not in VARIANTS:
            raise ReIDError(f"DATASETS.CUHK03_VARIANT must be 'labeled' or 'detected', got "
                            f'{cuhk03_variant!r}')
        base = find_dataset_dir(root, self.folder_names, 'CUHK03-NP')
        self.dataset_dir = osp.join(base, cuhk03_variant)
        folders = {split: osp.join(self.dataset_dir, sub) for split, sub in
                   (('train', 'bounding_box_train'), ('query', 'query'),
                    ('gallery', 'bounding_box_test'))}
        train = parse_folder(folders['train'], self.name_example)
        query = parse_folder(folders['query'], self.name_example)
        gallery = parse_folder(folders['gallery'], self.name_example)
        self._set_splits(train, query, gallery, folders, on_bad_image, verbose)
