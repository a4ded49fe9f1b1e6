"""Market-1501 (Zheng et al., ICCV 2015).

Layout under DATASETS.ROOT_DIR: Market-1501-v15.09.15/{bounding_box_train, query,
bounding_box_test}/<pid>_c<cam>s<seq>_<frame>_<box>.jpg, e.g. 0002_c1s1_000451_03.jpg.
Junk images (pid -1) are dropped everywhere; distractors (pid 0) stay in the gallery, as in
the standard protocol, and are left out of the training set.
"""
import os.path as osp

from .bases import ReIDDataset
from .parsing import find_dataset_dir, parse_folder


class Market1501(ReIDDataset):
    folder_names = ('Market-1501-v15.09.15', 'Market-1501', 'market1501', 'Market1501')
    name_example = '0002_c1s1_000451_03.jpg'

    def __init__(self, root='', verbose=True, on_bad_image='error', **kwargs):
        self.dataset_dir = find_dataset_dir(root, self.folder_names, type(self).__name__)
        folders = {split: osp.join(self.dataset_dir, sub) for split, sub in
                   (('train', 'bounding_box_train'), ('query', 'query'),
                    ('gallery', 'bounding_box_test'))}
        train = parse_folder(folders['train'], self.name_example, drop_pids=(-1, 0))
        query = parse_folder(folders['query'], self.name_example)
        gallery = parse_folder(folders['gallery'], self.name_example)
        self._set_splits(train, query, gallery, folders, on_bad_image, verbose)
