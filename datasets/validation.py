"""DATASETS.VAL_IDENTITIES: a validation split held out of the training identities.

`hold_out_identities(dataset, k, seed)` draws k training identities with a generator seeded
by SOLVER.SEED (the same seed always draws the same ones) and returns the other identities'
records, relabelled 0..M-1 in their old order, and a `ValidationSplit` of the held-out
identities' images, which the evaluators score like a test set. `without_held_out` gives the
training set a run trains on: the sampler, the identity classifier, the PCL memory, the
CLIP-ReID text features and the unsupervised clustering all read its `train` /
`num_train_pids`, so none of them sees a held-out identity. Camera and view tables keep
their full size (the held-out images come from the training cameras).

How each kind of training set is split:
- Several cameras (Market1501, MSMT17, DukeMTMC, VeRi, CUHK03, list-file data with camids):
  only identities with 2 or more images in each of 2 or more cameras can be held out. The
  query is one image per (identity, camera), drawn; the gallery is the rest. Protocol
  'standard', as Market1501: each query ignores the gallery images of its identity and
  camera, so the rule is what keeps a match in another camera for every query (an identity
  with one image in a camera, or two cameras of one image each, would leave queries with
  none, which the protocol would drop from the figures).
- One camera (animals, tiger/ATRW, VehicleID, list-file data without camids): identities
  with 2 or more images can be held out. The query is one drawn image per identity, the
  gallery the rest. Protocol 'animal' with no camera filter (the query image is not in the
  gallery, so nothing of the identity is ignored); ATRW's own protocol needs the official
  annotation file, which has no entry for training images, so tigers use 'animal' too.
  AP (`ap_mode`, for the evaluator): the standard AP (mean precision at each match, as every
  other protocol computes it), except for the animal family (protocol 'animal' / 'atrw'
  datasets), which keeps the AP its test figures use (TEST.AP_MODE, the trapezoid rule in
  the shipped configs), so its validation and test numbers are of one kind.
- Several datasets (DATASETS.NAMES a list): the identities are drawn over the union; the
  union's camera count picks the rule (an identity of a one-camera part is then never
  eligible when another part has several cameras).
- Unsupervised runs: the held-out images leave the unlabelled training set too; the split is
  scored with its true labels.
Validation pids are the identities' training labels before the relabelling; camids are the
training ones (with a joint set's offsets), so the evaluation set's cam_offset is 0.
"""
import copy
from collections import Counter

import numpy as np

from utils.errors import ReIDError

from .bases import ReIDDataset
from .joint import JointDataset
from .parsing import relabel

KEY = 'DATASETS.VAL_IDENTITIES'
SEED_TAG = 0x76616C  # apart from other generators seeded by SOLVER.SEED


class ValidationSplit(ReIDDataset):
    """The held-out identities as an evaluation dataset: query, gallery (records), protocol,
    ap_mode, name; held_out lists their training labels, single_camera the rule used."""
    name = 'validation'

    def __init__(self, source, query, gallery, held_out, single_camera, ap_mode):
        self.train, self.query, self.gallery = [], query, gallery
        self.held_out, self.single_camera = held_out, single_camera
        self.protocol = 'animal' if single_camera else 'standard'
        self.ap_mode = ap_mode
        self.object_word = source.object_word
        self.num_train_pids = 0
        self.num_train_cams, self.num_train_vids = source.num_train_cams, source.num_train_vids
        self.num_skipped = 0
        self.dataset_dir = getattr(source, 'dataset_dir', '')


def is_single_camera(dataset):
    """True when the one-camera rule applies: one camera id in the training set, or an
    animal-family dataset (not a union: its camera count decides)."""
    if len({r[2] for r in dataset.train}) <= 1:
        return True
    return not isinstance(dataset, JointDataset) and dataset.protocol in ('animal', 'atrw')


def eligible_identities(records, single_camera):
    """Sorted training labels that can be held out: 2+ images (one camera), else 2+ images
    in each of 2+ cameras (every query then keeps a gallery match in another camera)."""
    seen = {}
    for _, pid, camid, _ in records:
        seen.setdefault(pid, Counter())[camid] += 1
    if single_camera:
        return sorted(pid for pid, cams in seen.items() if sum(cams.values()) >= 2)
    return sorted(pid for pid, cams in seen.items() if sum(n >= 2 for n in cams.values()) >= 2)


def hold_out_identities(dataset, num_identities, seed, animal_ap_mode='trapezoid'):
    """(training records without the held-out identities, relabelled 0..M-1 in order,
    ValidationSplit) of a loaded training set; animal_ap_mode is the animal family's AP."""
    records, k = dataset.train, int(num_identities)
    total = len({r[1] for r in records})
    single = is_single_camera(dataset)
    eligible = eligible_identities(records, single)
    rule = 'with 2 or more images' if single else 'seen by 2 or more cameras with 2 or more ' \
        'images each'
    most = min(len(eligible), total - 2)  # 2 must train
    if k > len(eligible):
        raise ReIDError(f'{KEY} is {k} but only {len(eligible)} of the {total} training '
                        f'identities are {rule} and can be held out (at most {most})')
    if total - k < 2:
        raise ReIDError(f'{KEY} is {k}: it would leave {total - k} of the {total} training '
                        f'identities to train on; at least 2 must train (at most {most})')
    rng = np.random.default_rng([int(seed), SEED_TAG])
    held = sorted(int(p) for p in rng.choice(eligible, size=k, replace=False))
    held_set = set(held)
    groups = {}  # (pid, camera or 0) -> records, in training order
    for record in records:
        if record[1] in held_set:
            groups.setdefault((record[1], 0 if single else record[2]), []).append(record)
    query, gallery = [], []
    for key in sorted(groups):
        group = groups[key]
        pick = int(rng.integers(len(group)))
        query.append(group[pick])
        gallery += group[:pick] + group[pick + 1:]
    family = dataset.protocol in ('animal', 'atrw')
    split = ValidationSplit(dataset, query, gallery, held, single,
                            animal_ap_mode if family else 'standard')
    return relabel([r for r in records if r[1] not in held_set]), split


def without_held_out(dataset, train):
    """A shallow copy of the training set whose train split is `train` (the records
    hold_out_identities kept); test splits, cameras and views are the original's."""
    reduced = copy.copy(dataset)
    reduced.train = train
    reduced.num_train_pids = len({r[1] for r in train})
    return reduced
