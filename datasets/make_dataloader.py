"""make_dataloader(cfg): the dataset, its loaders and the numbers the model needs."""
import logging
import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from utils.distributed import get_rank, get_world_size, is_main_process, shard
from utils.errors import ReIDError

from .bases import ImageDataset, ReIDDataset
from .joint import JointDataset
from .registry import dataset_names, init_dataset
from .samplers import PKSampler, ShuffleSampler
from .transforms import build_transforms
from .validation import hold_out_identities, without_held_out

logger = logging.getLogger('reid')


@dataclass
class EvaluationSet:
    """One dataset to evaluate on: its query then gallery (test transform, this rank's
    share), camera ids shifted by cam_offset (its offset in a joint training set, else 0)."""
    name: str
    dataset: ReIDDataset
    val_loader: DataLoader
    num_query: int
    cam_offset: int = 0


@dataclass
class DataBundle:
    train_loader: DataLoader | None       # PK / shuffled batches (train transform); None when
    train_eval_loader: DataLoader | None  # evaluating only. dataset.train in order, test
    val_loader: DataLoader         # transform; query then gallery. Both: DDP shares (shard)
    num_query: int                 # val_loader / num_query: those of test_sets[0]
    num_classes: int
    camera_num: int
    view_num: int
    dataset: ReIDDataset           # the training set (the first test set's when not loaded);
                                   # without the held-out identities (DATASETS.VAL_IDENTITIES)
    test_sets: list = field(default_factory=list)  # EvaluationSet per dataset evaluated
    per_dataset: bool = False      # several test sets, or DATASETS.TEST_NAMES set: figures
                                   # are named per dataset and tabled
    val_sets: list = field(default_factory=list)   # DATASETS.VAL_IDENTITIES > 0: one
                                   # EvaluationSet 'validation' of the held-out identities


def collate(batch):
    """(imgs [B,3,H,W], pids, camids, viewids as int64 [B]) plus paths (a list) for test."""
    columns = list(zip(*batch))
    out = [torch.stack(columns[0])] + [torch.tensor(c, dtype=torch.int64) for c in columns[1:4]]
    return tuple(out + [list(columns[4])] if len(columns) > 4 else out)


def train_batch(cfg):
    """(config key, size) of the global PK batch: SOLVER.STAGE2.IMS_PER_BATCH for CLIP-ReID
    (its stage 1 batches cached features), SOLVER.IMS_PER_BATCH else."""
    if cfg.MODEL.METHOD == 'clipreid':
        return 'SOLVER.STAGE2.IMS_PER_BATCH', cfg.SOLVER.STAGE2.IMS_PER_BATCH
    return 'SOLVER.IMS_PER_BATCH', cfg.SOLVER.IMS_PER_BATCH


def num_workers(cfg, report=False):
    """DATALOADER.NUM_WORKERS, at most the CPUs this process may use (torch warns above)."""
    wanted = cfg.DATALOADER.NUM_WORKERS
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    if cpus and wanted > cpus:
        if report:
            logger.info('DATALOADER.NUM_WORKERS %d is more than the %d CPUs here: using %d',
                        wanted, cpus, cpus)
        return cpus
    return wanted


def dataset_kwargs(cfg, training=True):
    """The DATASETS keys every loader may take (each uses the ones it needs);
    evaluation_only lets list-file datasets go without a training list."""
    d = cfg.DATASETS
    return dict(on_bad_image=d.ON_BAD_IMAGE, verbose=is_main_process(),
                evaluation_only=not training,
                test_size=d.VEHICLEID_TEST_SIZE, view_labels=d.VIEW_LABELS, species=d.SPECIES,
                data_dir=d.DATA_DIR, test_root=d.TEST_ROOT_DIR, train_list=d.TRAIN_LIST,
                query_list=d.QUERY_LIST, gallery_list=d.GALLERY_LIST,
                cuhk03_variant=d.CUHK03_VARIANT)


def make_train_sampler(cfg, records, rank=0, world_size=1):
    """PK identity batches for DATALOADER.SAMPLER 'softmax_triplet' / 'triplet', and always for
    PCL (upstream PCL-CLIP hard-wires its RandomIdentitySampler); shuffled batches for
    'softmax'."""
    kind, (key, batch) = cfg.DATALOADER.SAMPLER, train_batch(cfg)
    if kind not in ('softmax', 'softmax_triplet', 'triplet'):
        raise ReIDError(f"DATALOADER.SAMPLER must be 'softmax', 'softmax_triplet' or 'triplet', "
                        f'got {kind!r}')
    if kind == 'softmax' and cfg.MODEL.METHOD != 'pcl':
        return ShuffleSampler(len(records), batch, cfg.SOLVER.SEED, rank, world_size, key)
    return PKSampler(records, batch, cfg.DATALOADER.NUM_INSTANCE, cfg.SOLVER.SEED,
                     rank, world_size, key)


def loader_kwargs(cfg, report=False):
    workers = num_workers(cfg, report)
    # every loader is iterated more than once (epochs, PCL's extra passes, evaluations):
    # keep its workers instead of forking new ones for each pass
    return dict(num_workers=workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
                persistent_workers=workers > 0)


def make_train_loader(cfg, records, sampler):
    """Batches of records (train transform) in the order the sampler draws them."""
    return DataLoader(ImageDataset(records, build_transforms(cfg, is_train=True)),
                      batch_size=sampler.per_rank, sampler=sampler, drop_last=True,
                      generator=torch.Generator(),  # its own: leaves the global one alone
                      **loader_kwargs(cfg))


def test_records(dataset, cam_offset=0):
    """Query then gallery records of a dataset, camera ids shifted by cam_offset."""
    return [(path, pid, camid + cam_offset, viewid)
            for path, pid, camid, viewid in dataset.query + dataset.gallery]


def training_parts(dataset, names):
    """{registry name: (dataset, camera offset)} of the training set's datasets."""
    if isinstance(dataset, JointDataset):
        return {p.name: (p.dataset, p.cam_offset) for p in dataset.parts}
    return {} if dataset is None else {names[0]: (dataset, 0)}


def test_datasets(cfg, train_set, training):
    """[(name, dataset, camera offset)] to evaluate on: DATASETS.TEST_NAMES, or the training
    datasets when it is empty. A training dataset is scored with its cameras as the model was
    trained on them (offset in a joint set); any other is loaded for evaluation only."""
    d = cfg.DATASETS
    train_names = dataset_names(d.NAMES)
    names = dataset_names(d.TEST_NAMES, 'DATASETS.TEST_NAMES') if d.TEST_NAMES else train_names
    dataset_names(list(dict.fromkeys(train_names + names)), 'DATASETS.NAMES + TEST_NAMES')
    parts = training_parts(train_set, train_names)
    out = []
    for name in names:
        if name in parts:
            out.append((name, *parts[name]))
        else:
            out.append((name, init_dataset(name, root=d.ROOT_DIR,
                                           **dataset_kwargs(cfg, training=False)), 0))
    return out


def needs_training_set(cfg, training):
    """Evaluation alone loads DATASETS.NAMES only when it is evaluated, when a joint
    set's camera offsets are needed, or when a validation split is held out of it."""
    d = cfg.DATASETS
    if training or not d.TEST_NAMES or d.VAL_IDENTITIES > 0:
        return True
    train_names = dataset_names(d.NAMES)
    return len(train_names) > 1 and bool(
        set(train_names) & set(dataset_names(d.TEST_NAMES, 'DATASETS.TEST_NAMES')))


def split_validation(cfg, dataset):
    """(the training set without the held-out identities, their ValidationSplit); logged."""
    count, seed = cfg.DATASETS.VAL_IDENTITIES, cfg.SOLVER.SEED
    train, val = hold_out_identities(dataset, count, seed, animal_ap_mode=cfg.TEST.AP_MODE)
    reduced = without_held_out(dataset, train)
    if is_main_process():
        logger.info('validation split (DATASETS.VAL_IDENTITIES): %d identities held out '
                    '(SOLVER.SEED %d): query %d images, gallery %d images, %s protocol%s; '
                    '%d identities train', count, seed, len(val.query), len(val.gallery),
                    val.protocol, f' ({val.ap_mode} AP)' if val.protocol == 'animal' else '',
                    reduced.num_train_pids)
    return reduced, val


def make_dataloader(cfg, training=True):
    """The loaders of a run; `training=False` (evaluation only) builds no train loaders.

    Unsupervised training (MODEL.UNSUPERVISED) gets no train_loader (its trainer samples
    pseudo-identities) and num_classes 1: the model's identity classifier is not trained.
    DATASETS.VAL_IDENTITIES > 0 holds that many training identities out (also when only
    evaluating): the bundle's dataset, loaders and num_classes are without them, and
    val_sets scores them (datasets/validation.py).
    """
    rank, world = get_rank(), get_world_size()
    dataset = val_split = None
    holding_out = cfg.DATASETS.VAL_IDENTITIES > 0
    if needs_training_set(cfg, training):
        dataset = init_dataset(cfg.DATASETS.NAMES, root=cfg.DATASETS.ROOT_DIR,
                               **dataset_kwargs(cfg, training or holding_out))
        if holding_out:
            dataset, val_split = split_validation(cfg, dataset)
    common = loader_kwargs(cfg, report=True)
    test_transform = build_transforms(cfg, is_train=False)
    batch = cfg.TEST.IMS_PER_BATCH  # test-transform loaders hold this rank's share of batches

    def evaluation_set(name, test_set, offset):
        loader = DataLoader(
            ImageDataset(shard(test_records(test_set, offset), rank, world, batch),
                         test_transform, with_path=True),
            batch_size=batch, shuffle=False, **common)
        return EvaluationSet(name, test_set, loader, len(test_set.query), offset)

    train_loader = train_eval_loader = None
    if training:
        if not cfg.MODEL.UNSUPERVISED:
            train_loader = make_train_loader(
                cfg, dataset.train, make_train_sampler(cfg, dataset.train, rank, world))
        train_eval_loader = DataLoader(ImageDataset(shard(dataset.train, rank, world, batch),
                                                    test_transform),
                                       batch_size=batch, shuffle=False, **common)
    test_sets = [evaluation_set(*entry) for entry in test_datasets(cfg, dataset, training)]
    val_sets = [] if val_split is None else [evaluation_set(val_split.name, val_split, 0)]
    if dataset is None:
        dataset = test_sets[0].dataset
    num_classes = 1 if cfg.MODEL.UNSUPERVISED else dataset.num_train_pids
    first = test_sets[0]
    return DataBundle(train_loader, train_eval_loader, first.val_loader, first.num_query,
                      num_classes, dataset.num_train_cams, dataset.num_train_vids, dataset,
                      test_sets, per_dataset=len(test_sets) > 1 or bool(cfg.DATASETS.TEST_NAMES),
                      val_sets=val_sets)
