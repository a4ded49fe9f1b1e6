"""Datasets, transforms, samplers and loaders. Public names (users' scripts import them):
init_dataset, make_dataloader, DataBundle, DATASET_REGISTRY, ImageDataset, build_transforms,
PKSampler, ShuffleSampler."""
from .bases import ImageDataset, ReIDDataset, read_image
from .make_dataloader import DataBundle, make_dataloader
from .registry import DATASET_REGISTRY, init_dataset
from .samplers import PKSampler, ShuffleSampler
from .transforms import build_transforms

__all__ = ['DATASET_REGISTRY', 'DataBundle', 'ImageDataset', 'PKSampler', 'ReIDDataset',
           'ShuffleSampler', 'build_transforms', 'init_dataset', 'make_dataloader', 'read_image']
