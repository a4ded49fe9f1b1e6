"""Image reading, the torch Dataset over records, and the base class of every loader.

Bad images (DATASETS.ON_BAD_IMAGE):
- 'error': an image that cannot be decoded stops the run with a ReIDError naming the file,
  when it is read.
- 'skip': every image is decoded once when the dataset is built; unreadable ones (missing,
  corrupt, truncated) are dropped from their split and counted (logged as a warning), and
  the train pids are relabelled afterwards. So the loaders, the PK sampler and batch
  collation only ever see readable images, and num_query/num_classes stay consistent.
"""
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.errors import ReIDError

from .parsing import relabel

logger = logging.getLogger('reid')
SPLITS = ('train', 'query', 'gallery')


def read_image(path):
    """The image as RGB, fully decoded; a ReIDError naming the file if that fails."""
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ReIDError(f'cannot read image {path}: {err}') from None


def _readable(path):
    try:
        read_image(path)
        return True
    except ReIDError:
        return False


def drop_unreadable(records):
    """(readable records, unreadable paths); decoding runs on a few threads."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        ok = list(pool.map(_readable, [r[0] for r in records], chunksize=64))
    return ([r for r, good in zip(records, ok) if good],
            [r[0] for r, good in zip(records, ok) if not good])


class ImageDataset(Dataset):
    """Records -> (img, pid, camid, viewid), plus the image path when with_path is True."""

    def __init__(self, records, transform=None, with_path=False):
        self.records = list(records)
        self.transform = transform
        self.with_path = with_path

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        """index, or (index, seed) from a training sampler: the transform then draws from
        Python's and torch's generators seeded with `seed`, restored afterwards."""
        index, seed = index if isinstance(index, tuple) else (index, None)
        path, pid, camid, viewid = self.records[index]
        img = read_image(path)
        if self.transform is not None:
            img = self.transform(img) if seed is None else _seeded(self.transform, img, seed)
        return (img, pid, camid, viewid, path) if self.with_path else (img, pid, camid, viewid)


def _seeded(transform, img, seed):
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            torch.manual_seed(seed)
            return transform(img)
    finally:
        random.setstate(state)


def split_statistics(records):
    """(# identities, # images, # cameras) of a split."""
    return (len({r[1] for r in records}), len(records), len({r[2] for r in records}))


class ReIDDataset:
    """Base of every loader. A subclass parses its layout and calls `_set_splits`.

    Attributes: train / query / gallery (lists of (img_path, pid, camid, viewid)),
    num_train_pids, num_train_cams, num_train_vids, protocol, object_word, num_skipped.
    num_train_cams / num_train_vids are max id + 1 over all splits (ids are 0-based), so they
    size camera/view embeddings safely; they equal the camera/view counts when every id occurs.
    """
    protocol = 'standard'
    object_word = 'person'
    may_be_empty = ()  # splits that are legitimately empty (e.g. the gallery of VehicleID)

    def _set_splits(self, train, query, gallery, sources, on_bad_image='error', verbose=True):
        """sources: split -> the folder or file it came from (named in errors)."""
        splits = {'train': train, 'query': query, 'gallery': gallery}
        self.num_skipped = 0
        if on_bad_image == 'skip':
            for name in SPLITS:
                splits[name], bad = drop_unreadable(splits[name])
                self.num_skipped += len(bad)
                if bad:
                    logger.warning('%s: skipped %d unreadable %s images (DATASETS.ON_BAD_IMAGE='
                                   'skip), e.g. %s', type(self).__name__, len(bad), name, bad[0])
        elif on_bad_image != 'error':
            raise ReIDError(f"DATASETS.ON_BAD_IMAGE must be 'error' or 'skip', got {on_bad_image!r}")
        for name in SPLITS:
            if not splits[name] and name not in self.may_be_empty:
                raise ReIDError(f'{type(self).__name__}: the {name} split is empty '
                                f'(no usable images from {sources[name]})')
        self.train = relabel(splits['train'])
        self.query, self.gallery = splits['query'], splits['gallery']
        every = self.train + self.query + self.gallery
        self.num_train_pids = len({r[1] for r in self.train})
        self.num_train_cams = max(r[2] for r in every) + 1
        self.num_train_vids = max(r[3] for r in every) + 1
        if verbose:
            self.log_statistics()

    def statistics(self):
        """split -> (# identities, # images, # cameras)."""
        return {name: split_statistics(getattr(self, name)) for name in SPLITS}

    def log_statistics(self):
        line = '  ' + '-' * 40
        rows = [f'=> {type(self).__name__} loaded', 'Dataset statistics:', line,
                '  subset   | # ids | # images | # cameras', line]
        for name, (pids, imgs, cams) in self.statistics().items():
            rows.append(f'  {name:<8} | {pids:5d} | {imgs:8d} | {cams:9d}')
        rows.append(line)
        logger.info('\n'.join(rows))
