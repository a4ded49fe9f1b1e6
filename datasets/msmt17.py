"""MSMT17 (Wei et al., CVPR 2018).

Folder under DATASETS.ROOT_DIR: MSMT17 (also MSMT17_V1, MSMT17_V2, msmt17), holding one of:
- V1: train/, test/ and list_train.txt, list_val.txt, list_query.txt, list_gallery.txt;
- V2: mask_train_v2/, mask_test_v2/ and the same four lists.
  List lines are '<path under train/ or test/> <pid>', e.g.
  '0000/0000_000_01_0303morning_0015_0.jpg 0'; the camera is the third '_' field of the
  name (01 -> camid 0), as upstream. Train = list_train + list_val, as in CLIP-ReID.
- the folder layout of PCL-CLIP's msmt17_v2: bounding_box_train/, query/,
  bounding_box_test/ with Market-style names '<pid>_c<cam>_...jpg'.
"""
import os.path as osp

from utils.errors import ReIDError

from .bases import ReIDDataset
from .parsing import (find_dataset_dir, list_field, parse_folder, parse_int, read_records,
                      require_dir)

LIST_LAYOUTS = (('train', 'test'), ('mask_train_v2', 'mask_test_v2'))
NAME_EXAMPLE = '0000/0000_000_01_0303morning_0015_0.jpg'


def parse_msmt_line(fields, list_path, lineno):
    rel = fields[0]
    pid = parse_int(list_field(fields, 1, list_path, lineno, 'pid'), list_path, lineno, 'pid')
    parts = osp.basename(rel).split('_')
    if len(parts) < 3 or not parts[2].isdigit() or int(parts[2]) < 1:
        raise ReIDError(f'{list_path}, line {lineno}: cannot parse the camera of {rel!r} '
                        f'(expected a name like {NAME_EXAMPLE})')
    return rel, pid, int(parts[2]) - 1


class MSMT17(ReIDDataset):
    folder_names = ('MSMT17', 'MSMT17_V1', 'MSMT17_V2', 'msmt17')

    def __init__(self, root='', verbose=True, on_bad_image='error', **kwargs):
        self.dataset_dir = d = find_dataset_dir(root, self.folder_names, 'MSMT17')
        check = on_bad_image != 'skip'
        for train_sub, test_sub in LIST_LAYOUTS:
            if osp.isdir(osp.join(d, train_sub)):
                train_dir = osp.join(d, train_sub)
                test_dir = require_dir(osp.join(d, test_sub))
                lists = {n: osp.join(d, f'list_{n}.txt') for n in ('train', 'val', 'query', 'gallery')}
                train = (read_records(lists['train'], train_dir, parse_msmt_line, check)
                         + read_records(lists['val'], train_dir, parse_msmt_line, check))
                query = read_records(lists['query'], test_dir, parse_msmt_line, check)
                gallery = read_records(lists['gallery'], test_dir, parse_msmt_line, check)
                sources = {'train': f"{lists['train']} + {lists['val']}",
                           'query': lists['query'], 'gallery': lists['gallery']}
                break
        else:
            if not osp.isdir(osp.join(d, 'bounding_box_train')):
                raise ReIDError(f'MSMT17: missing folder {osp.join(d, "train")} (or '
                                f'mask_train_v2/ or bounding_box_train/ in {d})')
            sources = {split: osp.join(d, sub) for split, sub in (
                ('train', 'bounding_box_train'), ('query', 'query'), ('gallery', 'bounding_box_test'))}
            example = '0000_c1_0303morning_0015_0.jpg'
            train = parse_folder(sources['train'], example)
            query = parse_folder(sources['query'], example)
            gallery = parse_folder(sources['gallery'], example)
        self._set_splits(train, query, gallery, sources, on_bad_image, verbose)
