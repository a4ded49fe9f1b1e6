"""Images named on a tool's command line: a folder, a list file, or a split of the config's
dataset. Labels (pid, camid) come with list files and dataset splits; folders have none."""
import os
import os.path as osp
from dataclasses import dataclass
from typing import Optional

import numpy as np

from utils.errors import ReIDError

from .parsing import IMAGE_EXTENSIONS, parse_int, read_list

SPLITS = ('query', 'gallery', 'train')


@dataclass
class ImageList:
    paths: list
    pids: Optional[np.ndarray] = None    # int64, or None when unknown
    camids: Optional[np.ndarray] = None
    viewids: Optional[np.ndarray] = None

    def __len__(self):
        return len(self.paths)


def folder_images(folder):
    """Every image under folder (sub-folders too), sorted by path."""
    found = [osp.join(top, name) for top, _, names in os.walk(folder) for name in names
             if name.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise ReIDError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) under {folder}')
    return ImageList(sorted(found))


def list_file_images(path):
    """Lines '<image path> [pid [camid]]' (the custom dataset's format); relative paths are
    taken from the list file's folder. pids / camids are kept when every line has them."""
    base, paths, pids, camids = osp.dirname(osp.abspath(path)), [], [], []
    for lineno, fields in read_list(path):
        image = fields[0] if osp.isabs(fields[0]) else osp.join(base, fields[0])
        if not osp.isfile(image):
            raise ReIDError(f'{path}, line {lineno}: image not found: {image}')
        paths.append(image)
        pids.append(parse_int(fields[1], path, lineno, 'pid') if len(fields) > 1 else None)
        camids.append(parse_int(fields[2], path, lineno, 'camid') if len(fields) > 2 else None)
    if not paths:
        raise ReIDError(f'{path} lists no images')

    def column(values):
        return None if None in values else np.asarray(values, dtype=np.int64)
    return ImageList(paths, column(pids), column(camids))


def split_images(dataset, split):
    """A split ('query', 'gallery', 'train') of a dataset object, with its labels."""
    records = getattr(dataset, split)
    if not records:
        raise ReIDError(f'the {split} split of {type(dataset).__name__} is empty')
    columns = list(zip(*records))
    return ImageList(list(columns[0]), *(np.asarray(c, dtype=np.int64) for c in columns[1:4]))


def read_images(source):
    """An ImageList from a folder, a list file or a single image file."""
    if osp.isdir(source):
        return folder_images(source)
    if not osp.isfile(source):
        raise ReIDError(f'{source}: no such folder or file')
    if source.lower().endswith(IMAGE_EXTENSIONS):
        return ImageList([source])
    return list_file_images(source)
