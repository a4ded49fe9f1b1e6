"""Your own data: a generic list-file dataset (DATASETS.NAMES 'custom').

Put three list files and the images under one folder, DATASETS.ROOT_DIR:

  DATASETS.TRAIN_LIST    training images     (e.g. train.txt)
  DATASETS.QUERY_LIST    query (probe) images (e.g. query.txt)
  DATASETS.GALLERY_LIST  gallery images       (e.g. gallery.txt)

List paths are relative to ROOT_DIR (or absolute). One image per line, fields separated by
spaces or tabs:

  <image path relative to ROOT_DIR> <pid> [camid]

  images/cam1/0001_a.jpg 1 0
  images/cam2/0001_b.jpg 1 1

- pid: an integer identity label. Train pids need not be contiguous (they are relabelled to
  0..N-1); query and gallery pids are compared as given. pid -1 marks junk and is skipped.
- camid: optional 0-based camera id, default 0. The standard protocol ignores gallery images
  with the same pid AND camid as the query, so if your cameras are unknown give the query
  and the gallery different camids (e.g. 0 and 1), or every same-identity match is ignored.
- Blank lines are ignored; a line that does not parse stops with its file and line number.

The prompt word is 'object'; set MODEL.PROMPT_OBJECT (e.g. 'person', 'car') to change it.
Evaluation alone (the test scripts) needs no TRAIN_LIST.
"""
from utils.errors import ReIDError

from .bases import ReIDDataset
from .parsing import list_field, parse_int, read_records, resolve_file


def parse_custom_line(fields, list_path, lineno):
    pid = parse_int(list_field(fields, 1, list_path, lineno, 'pid'), list_path, lineno, 'pid')
    camid = parse_int(fields[2], list_path, lineno, 'camid') if len(fields) > 2 else 0
    if camid < 0:
        raise ReIDError(f'{list_path}, line {lineno}: camid must be >= 0, got {camid}')
    return fields[0], pid, camid


class CustomDataset(ReIDDataset):
    object_word = 'object'
    list_keys = ('TRAIN_LIST', 'QUERY_LIST', 'GALLERY_LIST')

    def __init__(self, root='', verbose=True, on_bad_image='error', train_list='',
                 query_list='', gallery_list='', evaluation_only=False, **kwargs):
        check = on_bad_image != 'skip'
        sources, splits = {}, {}
        if evaluation_only and not train_list:
            self.may_be_empty = ('train',)
            sources['train'], splits['train'] = 'no DATASETS.TRAIN_LIST (evaluation only)', []
        for split, path, key in (('train', train_list, 'TRAIN_LIST'),
                                 ('query', query_list, 'QUERY_LIST'),
                                 ('gallery', gallery_list, 'GALLERY_LIST')):
            if split in sources:
                continue
            sources[split] = resolve_file(path, [root], f'DATASETS.{key}')
            records = read_records(sources[split], root, parse_custom_line, check)
            splits[split] = [r for r in records if r[1] != -1]
        self._set_splits(splits['train'], splits['query'], splits['gallery'], sources,
                         on_bad_image, verbose)
