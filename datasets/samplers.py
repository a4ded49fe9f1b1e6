"""Training samplers, reproducible from (SOLVER.SEED, epoch) and aware of DDP.

Both build the epoch's GLOBAL batches (the same on every rank, computed from the seed and
the epoch only, no communication) and each rank yields its contiguous share of every global
batch: items [rank * m, (rank + 1) * m) with m = batch_size / world_size. Concatenating the
ranks' shares in rank order gives back the single-process batch, and the loader's batch size
is `per_rank`. Call `set_epoch(epoch)` before each pass (resume relies on it); the same seed
and epoch give the same order.

Each item is `(dataset index, augmentation seed)`: the seed follows from (seed, epoch, the
item's place in the epoch), and `ImageDataset` draws the item's augmentation from it. So the
augmentation does not depend on which worker loads the item, on the number of workers or
processes, or on workers being kept alive across epochs (persistent workers).
"""
import logging
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Sampler

from utils.errors import ReIDError

logger = logging.getLogger('reid')


class GlobalBatchSampler(Sampler):
    """`batch_key` names the config key of the batch size in errors."""

    def __init__(self, batch_size, seed=0, rank=0, world_size=1, batch_key='IMS_PER_BATCH'):
        if batch_size < 1 or batch_size % world_size:
            raise ReIDError(f'the training batch size {batch_key} ({batch_size}) must be a '
                            f'positive multiple of the number of processes ({world_size})')
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = batch_size // world_size
        self._cache = (None, None)
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def global_batches(self, epoch=None):
        """The list of global batches (lists of dataset indices) of an epoch."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed % 2**32, epoch % 2**32])
            self._cache = (epoch, self._make_batches(rng))
        return self._cache[1]

    def _make_batches(self, rng):
        raise NotImplementedError

    def __iter__(self):
        start = self.rank * self.per_rank
        base = (self.seed % 2**31 * 1_000_003 + self.epoch % 2**31) * 1_000_003
        for b, batch in enumerate(self.global_batches()):
            first = base + b * self.batch_size + start
            for offset, index in enumerate(batch[start:start + self.per_rank]):
                yield index, _mix(first + offset)

    def __len__(self):
        return len(self.global_batches()) * self.per_rank


class PKSampler(GlobalBatchSampler):
    """P identities x K images per batch (batch_size = P * K), as upstream's
    RandomIdentitySampler: each identity's images are shuffled and cut into groups of K
    (an identity with fewer than K images is drawn K times with replacement); batches take one
    group from each of P random identities until fewer than P identities have groups left.
    Under DDP a rank gets whole identities when (batch_size / world_size) is a multiple of K.
    """

    def __init__(self, records, batch_size, num_instances, seed=0, rank=0, world_size=1,
                 batch_key='IMS_PER_BATCH'):
        super().__init__(batch_size, seed, rank, world_size, batch_key)
        if num_instances < 1 or batch_size % num_instances:
            raise ReIDError(f'the PK batch size {batch_key} ({batch_size}) must be a multiple of '
                            f'DATALOADER.NUM_INSTANCE ({num_instances}): change one of them')
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        self.index_by_pid = defaultdict(list)
        for index, record in enumerate(records):
            self.index_by_pid[record[1]].append(index)
        self.pids = sorted(self.index_by_pid)
        if len(self.pids) < self.num_pids_per_batch:
            raise ReIDError(f'a PK batch of {batch_size} images ({batch_key}) with '
                            f'DATALOADER.NUM_INSTANCE {num_instances} needs '
                            f'{self.num_pids_per_batch} identities; the training set has '
                            f'{len(self.pids)}: lower {batch_key} to at most '
                            f'{len(self.pids) * num_instances}')
        if self.per_rank % num_instances:
            logger.warning('PK sampler: %d images per process is not a multiple of K=%d; '
                           'some identities are split across processes',
                           self.per_rank, num_instances)

    def _make_batches(self, rng):
        k, p = self.num_instances, self.num_pids_per_batch
        groups = {}
        for pid in self.pids:
            idxs = np.asarray(self.index_by_pid[pid])
            idxs = rng.choice(idxs, k, replace=True) if len(idxs) < k else rng.permutation(idxs)
            groups[pid] = [idxs[i:i + k].tolist() for i in range(0, len(idxs) // k * k, k)]
        available, batches = list(self.pids), []
        while len(available) >= p:
            picked = [available[j] for j in rng.choice(len(available), p, replace=False)]
            batches.append([i for pid in picked for i in groups[pid].pop()])
            available = [pid for pid in available if groups[pid]]
        return batches


class ShuffleSampler(GlobalBatchSampler):
    """A seeded random permutation cut into full batches (DATALOADER.SAMPLER 'softmax');
    the incomplete last batch is dropped so every batch (and DDP share) has the same size."""

    def __init__(self, num_samples, batch_size, seed=0, rank=0, world_size=1,
                 batch_key='IMS_PER_BATCH'):
        super().__init__(batch_size, seed, rank, world_size, batch_key)
        if num_samples < batch_size:
            raise ReIDError(f'the training set has {num_samples} images, fewer than one '
                            f'batch ({batch_key} {batch_size})')
        self.num_samples = num_samples

    def _make_batches(self, rng):
        order = rng.permutation(self.num_samples).tolist()
        b = self.batch_size
        return [order[i:i + b] for i in range(0, self.num_samples // b * b, b)]


def _mix(n):
    """A well-spread 63-bit seed from an integer (splitmix64)."""
    z = (n + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) >> 1
