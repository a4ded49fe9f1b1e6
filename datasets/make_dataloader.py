"""make_dataloader(cfg): the dataset, its loaders and the numbers the model needs."""
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from utils.distributed import get_rank, get_world_size, is_main_process
from utils.errors import ReIDError

from .bases import ImageDataset, ReIDDataset
from .registry import init_dataset
from .samplers import PKSampler, ShuffleSampler
from .transforms import build_transforms


@dataclass
class DataBundle:
    train_loader: DataLoader | None       # PK / shuffled batches (train transform); None when
    train_eval_loader: DataLoader | None  # evaluating only. dataset.train in order, test transform
    val_loader: DataLoader         # query then gallery, test transform, contiguous DDP shards
    num_query: int
    num_classes: int
    camera_num: int
    view_num: int
    dataset: ReIDDataset


def collate(batch):
    """(imgs [B,3,H,W], pids, camids, viewids as int64 [B]) plus paths (a list) for test."""
    columns = list(zip(*batch))
    out = [torch.stack(columns[0])] + [torch.tensor(c, dtype=torch.int64) for c in columns[1:4]]
    return tuple(out + [list(columns[4])] if len(columns) > 4 else out)


def train_batch_size(cfg):
    """Global PK batch: SOLVER.STAGE2.IMS_PER_BATCH for CLIP-ReID, SOLVER.IMS_PER_BATCH else."""
    solver = cfg.SOLVER.STAGE2 if cfg.MODEL.METHOD == 'clipreid' else cfg.SOLVER
    return solver.IMS_PER_BATCH


def dataset_kwargs(cfg):
    """The DATASETS keys every loader may take (each uses the ones it needs)."""
    d = cfg.DATASETS
    return dict(on_bad_image=d.ON_BAD_IMAGE, verbose=is_main_process(),
                test_size=d.VEHICLEID_TEST_SIZE, view_labels=d.VIEW_LABELS, species=d.SPECIES,
                data_dir=d.DATA_DIR, test_root=d.TEST_ROOT_DIR, train_list=d.TRAIN_LIST,
                query_list=d.QUERY_LIST, gallery_list=d.GALLERY_LIST)


def make_train_sampler(cfg, records, rank=0, world_size=1):
    kind, batch = cfg.DATALOADER.SAMPLER, train_batch_size(cfg)
    if 'triplet' in kind:
        return PKSampler(records, batch, cfg.DATALOADER.NUM_INSTANCE, cfg.SOLVER.SEED,
                         rank, world_size)
    if kind == 'softmax':
        return ShuffleSampler(len(records), batch, cfg.SOLVER.SEED, rank, world_size)
    raise ReIDError(f"DATALOADER.SAMPLER must be 'softmax', 'softmax_triplet' or 'triplet', "
                    f'got {kind!r}')


def loader_kwargs(cfg):
    return dict(num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=collate,
                pin_memory=torch.cuda.is_available())


def make_train_loader(cfg, records, sampler):
    """Batches of records (train transform) in the order the sampler draws them."""
    return DataLoader(ImageDataset(records, build_transforms(cfg, is_train=True)),
                      batch_size=sampler.per_rank, sampler=sampler, drop_last=True,
                      generator=sampler.generator, **loader_kwargs(cfg))


def make_dataloader(cfg, training=True):
    """The loaders of a run; `training=False` (evaluation only) builds no train loaders.

    Unsupervised training (MODEL.UNSUPERVISED) gets no train_loader (its trainer samples
    pseudo-identities) and num_classes 1: the model's identity classifier is not trained.
    """
    rank, world = get_rank(), get_world_size()
    dataset = init_dataset(cfg.DATASETS.NAMES, root=cfg.DATASETS.ROOT_DIR, **dataset_kwargs(cfg))
    common = loader_kwargs(cfg)
    test_transform = build_transforms(cfg, is_train=False)
    train_loader = train_eval_loader = None
    if training:
        if not cfg.MODEL.UNSUPERVISED:
            train_loader = make_train_loader(
                cfg, dataset.train, make_train_sampler(cfg, dataset.train, rank, world))
        train_eval_loader = DataLoader(ImageDataset(dataset.train, test_transform),
                                       batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False, **common)
    records = dataset.query + dataset.gallery
    shard = records[len(records) * rank // world:len(records) * (rank + 1) // world]
    val_loader = DataLoader(ImageDataset(shard, test_transform, with_path=True),
                            batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False, **common)
    num_classes = 1 if cfg.MODEL.UNSUPERVISED else dataset.num_train_pids
    return DataBundle(train_loader, train_eval_loader, val_loader, len(dataset.query),
                      num_classes, dataset.num_train_cams, dataset.num_train_vids, dataset)
