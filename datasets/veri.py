"""VeRi-776 (Liu et al., ICME 2016).

Layout under DATASETS.ROOT_DIR: VeRi (also VeRi-776, VeRi776, veri)/{image_train,
image_query, image_test}/<vid>_c<cam>_<frame>_<n>.jpg, e.g. 0001_c001_00016450_0.jpg.

Viewpoints (for MODEL.SIE_VIEW): DATASETS.VIEW_LABELS names one or more comma-separated
files in the format of the VeRi keypoint annotations that upstream CLIP-ReID reads
(keypoint_train.txt, keypoint_test.txt from VehicleReIDKeyPointData): one line per image,
'<image path> <x1> <y1> ... <x20> <y20> <orientation>'; the LAST field is the viewpoint id
(0-7) and images are matched by file name. Relative paths are looked up under ROOT_DIR, the
dataset folder, then the working directory. As upstream, an image without a label is left
out (the count is logged). Without VIEW_LABELS every viewid is 0.
"""
import logging
import os.path as osp

from utils.errors import ReIDError

from .bases import ReIDDataset
from .parsing import find_dataset_dir, parse_folder, parse_int, read_list, resolve_file

logger = logging.getLogger('reid')
NAME_EXAMPLE = '0001_c001_00016450_0.jpg'


def load_view_labels(spec, bases):
    """image file name -> viewpoint id, from the comma-separated files in spec."""
    views = {}
    for name in filter(None, (part.strip() for part in spec.split(','))):
        path = resolve_file(name, bases, 'DATASETS.VIEW_LABELS')
        for lineno, fields in read_list(path):
            view = parse_int(fields[-1], path, lineno, 'viewpoint') if len(fields) > 1 else -1
            if view < 0:
                raise ReIDError(f'{path}, line {lineno}: expected "<image path> ... <viewpoint '
                                f'id >= 0>", got {" ".join(fields)!r}')
            views[osp.basename(fields[0])] = view
    return views


def attach_views(records, views, split):
    out = [(p, pid, cam, views[osp.basename(p)]) for p, pid, cam, _ in records
           if osp.basename(p) in views]
    if len(out) < len(records):
        logger.warning('VeRi: %d %s images have no viewpoint in DATASETS.VIEW_LABELS; left out',
                       len(records) - len(out), split)
    return out


class VeRi(ReIDDataset):
    folder_names = ('VeRi', 'VeRi-776', 'VeRi776', 'veri', 'veri776')
    object_word = 'vehicle'

    def __init__(self, root='', verbose=True, on_bad_image='error', view_labels='', **kwargs):
        self.dataset_dir = d = find_dataset_dir(root, self.folder_names, 'VeRi')
        sources = {split: osp.join(d, sub) for split, sub in (
            ('train', 'image_train'), ('query', 'image_query'), ('gallery', 'image_test'))}
        splits = {split: parse_folder(folder, NAME_EXAMPLE) for split, folder in sources.items()}
        if view_labels:
            views = load_view_labels(view_labels, [root, d])
            splits = {split: attach_views(recs, views, split) for split, recs in splits.items()}
            sources = {split: f'{src} with DATASETS.VIEW_LABELS={view_labels!r}'
                       for split, src in sources.items()}
        self._set_splits(splits['train'], splits['query'], splits['gallery'], sources,
                         on_bad_image, verbose)
