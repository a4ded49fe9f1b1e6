"""Several datasets trained as one (DATASETS.NAMES a list, as fast-reid's DATASETS.NAMES).

The union's training records keep each dataset's images; identities and cameras are offset
per dataset (dataset i's labels start after those of datasets 0..i-1), so none collide and
the identity classifier and the camera table are sized to the union. View ids are shared
(they name orientations, the same in every dataset). The union's query / gallery are the
parts' test splits with the same camera offsets and identities offset apart; evaluation
itself scores each part on its own (make_dataloader's test sets).
"""
import logging
from dataclasses import dataclass

from utils.errors import ReIDError

from .bases import ReIDDataset

logger = logging.getLogger('reid')


@dataclass
class Part:
    """One dataset of a union: its registry name, the dataset and where its labels start."""
    name: str
    dataset: ReIDDataset
    pid_offset: int = 0
    cam_offset: int = 0


def shift(records, pid_offset, cam_offset):
    """Records with identities and cameras offset; negative identities (junk, distractors)
    stay as they are, so they never become another dataset's identity."""
    return [(path, pid + pid_offset if pid >= 0 else pid, camid + cam_offset, viewid)
            for path, pid, camid, viewid in records]


def check_list_keys(names, classes, key='DATASETS.NAMES'):
    """Stop when two list-file datasets would read the same DATASETS.*_LIST keys."""
    owner = {}
    for name, cls in zip(names, classes):
        for list_key in getattr(cls, 'list_keys', ()):
            if list_key in owner and owner[list_key] != name:
                raise ReIDError(f'{key}: {owner[list_key]} and {name} would both read '
                                f'DATASETS.{list_key}; a run takes at most one list-file dataset')
            owner[list_key] = name


class JointDataset(ReIDDataset):
    def __init__(self, parts, verbose=True):
        """parts: [(registry name, dataset)], at least two."""
        self.parts, train, query, gallery = [], [], [], []
        pid_offset = cam_offset = test_offset = 0
        for name, dataset in parts:
            self.parts.append(Part(name, dataset, pid_offset, cam_offset))
            train += shift(dataset.train, pid_offset, cam_offset)
            tests = dataset.query + dataset.gallery
            query += shift(dataset.query, test_offset, cam_offset)
            gallery += shift(dataset.gallery, test_offset, cam_offset)
            pid_offset += dataset.num_train_pids
            cam_offset += dataset.num_train_cams
            test_offset += max((r[1] for r in tests), default=-1) + 1
        self.train, self.query, self.gallery = train, query, gallery
        self.num_train_pids, self.num_train_cams = pid_offset, cam_offset
        self.num_train_vids = max(p.dataset.num_train_vids for p in self.parts)
        self.num_skipped = sum(p.dataset.num_skipped for p in self.parts)
        first = self.parts[0].dataset
        self.protocol = first.protocol
        words = {p.dataset.object_word for p in self.parts}
        self.object_word = first.object_word if len(words) == 1 else 'object'
        self.dataset_dir = first.dataset_dir if hasattr(first, 'dataset_dir') else ''
        if verbose:
            self.log_parts()

    def part(self, name):
        """The Part registered under `name` (a registry name), or None."""
        return next((p for p in self.parts if p.name == name), None)

    def log_parts(self):
        line = '  ' + '-' * 66
        rows = ['=> joint training set (DATASETS.NAMES): the union of', line,
                '  dataset      | # ids | # images | # cameras | id offset | camera offset',
                line]
        for p in self.parts:
            ids, images, cams = p.dataset.statistics()['train']
            rows.append(f'  {p.name:<12} | {ids:5d} | {images:8d} | {cams:9d} | '
                        f'{p.pid_offset:9d} | {p.cam_offset:13d}')
        ids, images, cams = self.statistics()['train']
        rows += [line, f'  {"union":<12} | {ids:5d} | {images:8d} | {cams:9d} |', line]
        logger.info('\n'.join(rows))
