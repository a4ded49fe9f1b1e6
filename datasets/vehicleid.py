"""VehicleID (Liu et al., CVPR 2016).

Layout under DATASETS.ROOT_DIR: VehicleID_V1.0 (also VehicleID, vehicleid)/
  image/<name>.jpg
  train_test_split/train_list.txt, test_list_800.txt, test_list_1600.txt, test_list_2400.txt
List lines: '<image name without .jpg> <vehicle id>'. DATASETS.VEHICLEID_TEST_SIZE picks the
test list. Protocol 'vehicleid': `query` holds every image of the test list and `gallery`
is empty; the evaluator draws one random gallery image per identity itself, repeatedly.
VehicleID has no camera labels: every camid is 0.
"""
import os.path as osp

from .bases import ReIDDataset
from .parsing import find_dataset_dir, list_field, parse_int, read_records, require_dir


def parse_vehicleid_line(fields, list_path, lineno):
    name = fields[0]
    pid = parse_int(list_field(fields, 1, list_path, lineno, 'vehicle id'), list_path, lineno,
                    'vehicle id')
    return (name if osp.splitext(name)[1] else name + '.jpg'), pid, 0


class VehicleID(ReIDDataset):
    folder_names = ('VehicleID_V1.0', 'VehicleID', 'vehicleid', 'VehicleID_V1')
    object_word = 'vehicle'
    protocol = 'vehicleid'
    may_be_empty = ('gallery',)

    def __init__(self, root='', verbose=True, on_bad_image='error', test_size=800, **kwargs):
        self.dataset_dir = d = find_dataset_dir(root, self.folder_names, 'VehicleID')
        image_dir = require_dir(osp.join(d, 'image'))
        split_dir = require_dir(osp.join(d, 'train_test_split'))
        self.test_size = int(test_size)
        sources = {'train': osp.join(split_dir, 'train_list.txt'),
                   'query': osp.join(split_dir, f'test_list_{self.test_size}.txt'),
                   'gallery': '(drawn by the evaluator)'}
        check = on_bad_image != 'skip'
        train = read_records(sources['train'], image_dir, parse_vehicleid_line, check)
        query = read_records(sources['query'], image_dir, parse_vehicleid_line, check)
        self._set_splits(train, query, [], sources, on_bad_image, verbose)
