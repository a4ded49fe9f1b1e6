"""Animal re-identification from list files (yak, elephant, tiger/ATRW), as Chloe-Yu/CLIP-ReID.

Config (nothing is hard-coded):
  DATASETS.ROOT_DIR / DATASETS.DATA_DIR   folder of the training images
  DATASETS.TRAIN_LIST                     training list, image paths relative to that folder
  DATASETS.TEST_ROOT_DIR                  folder of the test images (as given, else under
                                          ROOT_DIR)
  DATASETS.QUERY_LIST, DATASETS.GALLERY_LIST  probe and gallery lists, paths relative to
                                          TEST_ROOT_DIR
  DATASETS.SPECIES                        'yak', 'elephant', 'tiger', ...: the prompt word
List paths are looked up under ROOT_DIR, then the working directory; evaluation alone (the
test scripts) needs no TRAIN_LIST. Lines:
'<relative image path> <label> [more columns, ignored]'; labels may be written '12' or '12.0'.

Protocols: 'animal' (every species but tiger): the query images are part of the gallery, and
the evaluator excludes a query's own image by its path. 'atrw' (tiger, the ATRW plain track):
query = the images of QUERY_LIST (label optional, -1 when absent), gallery = [], and the
evaluator ranks the query set against itself with the official annotation. Camera ids are 0.
"""
import logging
import os.path as osp

from utils.errors import ReIDError

from .bases import ReIDDataset
from .parsing import list_field, parse_int, read_records, require_dir, resolve_file

logger = logging.getLogger('reid')


def parse_labelled(fields, list_path, lineno):
    label = list_field(fields, 1, list_path, lineno, 'label')
    return fields[0], parse_int(label, list_path, lineno, 'label'), 0


def parse_maybe_labelled(fields, list_path, lineno):
    if len(fields) < 2:
        return fields[0], -1, 0
    return parse_labelled(fields, list_path, lineno)


class Animals(ReIDDataset):
    list_keys = ('TRAIN_LIST', 'QUERY_LIST', 'GALLERY_LIST', 'TEST_ROOT_DIR', 'DATA_DIR')
    def __init__(self, root='', verbose=True, on_bad_image='error', species='tiger',
                 data_dir='Animal-Seg-V3', test_root='', train_list='', query_list='',
                 gallery_list='', evaluation_only=False, **kwargs):
        self.species = self.object_word = species
        self.protocol = 'atrw' if species.lower() == 'tiger' else 'animal'
        self.may_be_empty = ('gallery',) if self.protocol == 'atrw' else ()
        no_train = evaluation_only and not train_list
        if no_train:
            self.may_be_empty += ('train',)
        if not test_root:
            raise ReIDError('DATASETS.TEST_ROOT_DIR is not set (animals: folder of the test images)')
        test_dir = require_dir(test_root if osp.isdir(test_root) else osp.join(root, test_root))
        check = on_bad_image != 'skip'
        sources = {'query': resolve_file(query_list, [root], 'DATASETS.QUERY_LIST')}
        if no_train:
            train, sources['train'] = [], 'no DATASETS.TRAIN_LIST (evaluation only)'
        else:
            sources['train'] = resolve_file(train_list, [root], 'DATASETS.TRAIN_LIST')
            train = read_records(sources['train'], require_dir(osp.join(root, data_dir)),
                                 parse_labelled, check)
        if self.protocol == 'atrw':
            query = read_records(sources['query'], test_dir, parse_maybe_labelled, check)
            gallery, sources['gallery'] = [], '(ATRW: the query set itself)'
        else:
            query = read_records(sources['query'], test_dir, parse_labelled, check)
            sources['gallery'] = resolve_file(gallery_list, [root], 'DATASETS.GALLERY_LIST')
            gallery = read_records(sources['gallery'], test_dir, parse_labelled, check)
            missing = len({r[0] for r in query} - {r[0] for r in gallery})
            if missing:
                logger.warning('animals: %d query images are not in the gallery list %s; the '
                               'animal protocol expects the query to be part of the gallery',
                               missing, sources['gallery'])
        self._set_splits(train, query, gallery, sources, on_bad_image, verbose)
