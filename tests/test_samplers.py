"""PK / shuffle samplers (reproducibility, DDP shares) and make_dataloader."""
import importlib
import logging
import os

import pytest
import torch

from _data_fixtures import copy_layout, demo, make_cfg  # noqa: F401 (fixture)
from config import load_config
from datasets import DataBundle, PKSampler, ShuffleSampler, make_dataloader
from datasets.samplers import GlobalBatchSampler
from utils.errors import ReIDError

mdl = importlib.import_module('datasets.make_dataloader')  # the module, not the function

def indices(sampler):
    """The dataset indices a sampler yields (without their augmentation seeds)."""
    return [index for index, _ in sampler]


def records(counts):
    """Records with len(counts) identities; identity p has counts[p] images."""
    return [(f'{p}_{i}.jpg', p, 0, 0) for p, n in enumerate(counts) for i in range(n)]


def pid_runs(batch, recs, k):
    """The pids of a batch, checking it is made of runs of k images of one identity."""
    runs = [batch[i:i + k] for i in range(0, len(batch), k)]
    pids = []
    for run in runs:
        assert len({recs[i][1] for i in run}) == 1
        pids.append(recs[run[0]][1])
    return pids


def test_pk_batches_are_p_identities_times_k_images():
    recs = records([1, 2, 5, 8, 3, 4, 9, 4])
    sampler = PKSampler(recs, batch_size=8, num_instances=4, seed=1)
    batches = sampler.global_batches()
    assert batches and all(len(b) == 8 for b in batches)
    used = []
    for batch in batches:
        pids = pid_runs(batch, recs, 4)
        assert len(pids) == 2 and len(set(pids)) == 2
        used += batch
    # identities with >= K images never repeat an image within an epoch
    big = [i for i in used if len([r for r in recs if r[1] == recs[i][1]]) >= 4]
    assert len(big) == len(set(big))
    assert indices(sampler) == used and len(sampler) == len(used)


def test_small_identities_are_sampled_with_replacement():
    recs = records([1, 2, 4, 4])
    sampler = PKSampler(recs, batch_size=4, num_instances=4, seed=0)
    groups = {recs[b[0]][1]: b for b in sampler.global_batches()}
    assert sorted(groups) == [0, 1, 2, 3]  # each identity gives exactly one group of K
    assert groups[0] == [0, 0, 0, 0]
    assert len(groups[1]) == 4 and set(groups[1]) <= {1, 2}
    assert sorted(groups[2]) == [3, 4, 5, 6]


def test_exact_epoch_when_every_identity_has_k_images():
    recs = records([4] * 6)
    sampler = PKSampler(recs, batch_size=8, num_instances=4, seed=5)
    assert len(sampler.global_batches()) == 3 and sorted(indices(sampler)) == list(range(24))


def test_order_depends_only_on_seed_and_epoch():
    recs = records([3, 6, 5, 8, 4, 7, 2, 9])
    a, b = PKSampler(recs, 8, 2, seed=7), PKSampler(recs, 8, 2, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)  # indices and augmentation seeds
    first = list(a)
    a.set_epoch(4)
    assert list(a) != first
    a.set_epoch(3)
    assert list(a) == first  # resume: going back to an epoch gives its order again
    c = PKSampler(recs, 8, 2, seed=8)
    c.set_epoch(3)
    assert list(c) != first


@pytest.mark.parametrize('batch,k,world', [(8, 4, 2), (16, 4, 4), (12, 2, 3), (8, 4, 4)])
def test_ddp_ranks_split_one_single_process_batch(batch, k, world, caplog):
    recs = records([5, 3, 8, 4, 6, 2, 7, 9, 4, 4, 1, 6])
    single = PKSampler(recs, batch, k, seed=11)
    single.set_epoch(2)
    with caplog.at_level(logging.WARNING, logger='reid'):
        ranks = [PKSampler(recs, batch, k, seed=11, rank=r, world_size=world) for r in range(world)]
    for sampler in ranks:
        sampler.set_epoch(2)
    shares = [indices(s) for s in ranks]
    per = batch // world
    # every item keeps its single-process augmentation seed on whichever rank loads it
    assert sorted(item for s in ranks for item in s) == sorted(single)
    assert all(len(s) == len(shares[0]) == len(single) // world for s in shares)
    for n, global_batch in enumerate(single.global_batches()):
        parts = [s[n * per:(n + 1) * per] for s in shares]
        assert sum(parts, []) == global_batch  # together: exactly the single-process batch
        positions = [set(range(r * per, (r + 1) * per)) for r in range(world)]
        assert not set.intersection(*positions)
        if per % k == 0:  # whole identities per rank
            rank_pids = [set(pid_runs(p, recs, k)) for p in parts]
            assert sum(len(p) for p in rank_pids) == batch // k
    assert ('split across processes' in caplog.text) == (per % k != 0)


def test_shuffle_sampler_full_batches_seeded_and_sharded():
    single = ShuffleSampler(10, 4, seed=3)
    assert len(single) == 8 and len(set(indices(single))) == 8  # incomplete last batch dropped
    again = ShuffleSampler(10, 4, seed=3)
    assert list(again) == list(single)
    again.set_epoch(1)
    assert list(again) != list(single)
    halves = [list(ShuffleSampler(10, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    seeds = [seed for _, seed in single]
    assert len(set(seeds)) == len(seeds)  # one augmentation seed per item
    # spread over the seed space: consecutive seeds give torch correlated first draws
    assert all(abs(a - b) > 2**40 for a, b in zip(seeds, seeds[1:]))
    assert halves[0][:2] + halves[1][:2] == list(single)[:4]


def test_sampler_errors_are_clear():
    with pytest.raises(ReIDError, match=r'multiple of DATALOADER.NUM_INSTANCE \(3\)'):
        PKSampler(records([4] * 4), 8, 3)
    with pytest.raises(ReIDError, match='needs 4 identities; the training set has 3'):
        PKSampler(records([4] * 3), 16, 4)
    with pytest.raises(ReIDError, match=r'multiple of the number of processes \(3\)'):
        GlobalBatchSampler(8, world_size=3)
    with pytest.raises(ReIDError, match='fewer than one batch'):
        ShuffleSampler(3, 4)


def test_make_dataloader_shapes_and_order(demo):
    root, _ = demo
    data = make_dataloader(make_cfg(root))
    assert isinstance(data, DataBundle)
    assert (data.num_query, data.num_classes, data.camera_num, data.view_num) == (6, 3, 3, 1)
    assert data.dataset.protocol == 'standard' and isinstance(data.train_loader.sampler, PKSampler)
    imgs, pids, camids, viewids = next(iter(data.train_loader))
    assert imgs.shape == (4, 3, 64, 32) and imgs.dtype == torch.float32
    assert all(t.dtype == torch.int64 and t.shape == (4,) for t in (pids, camids, viewids))
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]
    assert len(data.train_loader) == len(data.train_loader.sampler) // 4
    val = list(data.val_loader)
    assert [len(b) for b in val] == [5] * 5 and all(isinstance(b[4], list) for b in val)
    paths = sum((b[4] for b in val), [])
    assert paths == [r[0] for r in data.dataset.query + data.dataset.gallery]
    batch = next(iter(data.train_eval_loader))
    assert len(batch) == 4 and batch[1].tolist() == [r[1] for r in data.dataset.train[:5]]
    sampler = data.train_loader.sampler
    sampler.set_epoch(5)
    first = [b[1].tolist() for b in data.train_loader]
    sampler.set_epoch(5)
    assert [b[1].tolist() for b in data.train_loader] == first


def test_batch_size_follows_the_method_and_sampler(demo):
    root, _ = demo
    data = make_dataloader(make_cfg(root, 'MODEL.METHOD', 'clipreid', 'SOLVER.STAGE2.IMS_PER_BATCH', 6))
    assert data.train_loader.batch_size == 6
    data = make_dataloader(make_cfg(root, 'DATALOADER.SAMPLER', 'softmax', 'SOLVER.IMS_PER_BATCH', 5))
    assert isinstance(data.train_loader.sampler, ShuffleSampler) and len(data.train_loader) == 3
    with pytest.raises(ReIDError, match="DATALOADER.SAMPLER must be"):
        make_dataloader(make_cfg(root, 'DATALOADER.SAMPLER', 'random'))


def _is_pk(batches, k):
    """Every batch is whole groups of k consecutive images of one identity, no identity twice."""
    for pids in batches:
        groups = [pids[i:i + k] for i in range(0, len(pids), k)]
        assert all(len(set(g)) == 1 for g in groups), pids
        assert len({g[0] for g in groups}) == len(groups), pids
    return True


@pytest.mark.parametrize('sampler', ['softmax', 'softmax_triplet'])
def test_pcl_always_trains_on_pk_batches(demo, sampler):
    root, _ = demo
    data = make_dataloader(make_cfg(root, 'MODEL.METHOD', 'pcl', 'DATALOADER.SAMPLER', sampler,
                                    'SOLVER.IMS_PER_BATCH', 6))
    assert isinstance(data.train_loader.sampler, PKSampler)
    assert _is_pk([b[1].tolist() for b in data.train_loader], 2)


def test_upstream_pcl_yaml_samples_pk_batches(demo):
    """Upstream's pcl-vit.yml sets no sampler (the tree default is 'softmax'), yet upstream
    PCL-CLIP trains on RandomIdentitySampler batches: so does make_dataloader."""
    root, _ = demo
    fixture = os.path.join(os.path.dirname(__file__), 'fixtures', 'upstream_yaml',
                           'pcl_pcl-vit.yml')
    cfg = load_config(fixture, ['MODEL.METHOD', 'pcl', 'DATASETS.ROOT_DIR', root,
                                'DATALOADER.NUM_WORKERS', '0', 'INPUT.SIZE_TRAIN', '[64, 32]',
                                'INPUT.SIZE_TEST', '[64, 32]', 'SOLVER.IMS_PER_BATCH', '8',
                                'DATALOADER.NUM_INSTANCE', '4'])
    assert cfg.DATALOADER.SAMPLER == 'softmax'
    data = make_dataloader(cfg)
    batches = [b[1].tolist() for b in data.train_loader]
    assert batches and all(len(b) == 8 for b in batches) and _is_pk(batches, 4)


def test_ddp_shards_of_make_dataloader(demo, monkeypatch):
    root, _ = demo
    monkeypatch.setattr(mdl, 'get_world_size', lambda: 2)
    shards, trains, evals = [], [], []
    for rank in range(2):
        monkeypatch.setattr(mdl, 'get_rank', lambda rank=rank: rank)
        data = make_dataloader(make_cfg(root))
        shards.append([p for b in data.val_loader for p in b[4]])
        trains.append(indices(data.train_loader.sampler))
        evals.append([r[0] for r in data.train_eval_loader.dataset.records])
        assert data.train_loader.batch_size == 2
    # shares cut at multiples of TEST.IMS_PER_BATCH (5): every batch is a single-process one
    assert shards[0] + shards[1] == [r[0] for r in data.dataset.query + data.dataset.gallery]
    assert [len(s) for s in shards] == [10, 12]  # 6 query + 12 gallery + 4 distractors
    assert evals[0] + evals[1] == [r[0] for r in data.dataset.train]
    assert [len(e) for e in evals] == [10, 8]  # 18 training images
    assert len(trains[0]) == len(trains[1]) and not set(trains[0]) & set(trains[1])


def test_workers_and_skipped_images_through_the_loader(demo, tmp_path):
    new_root = copy_layout(demo[0], 'Market-1501-v15.09.15', tmp_path)
    query = sorted(os.listdir(f'{new_root}/Market-1501-v15.09.15/query'))
    with open(f'{new_root}/Market-1501-v15.09.15/query/{query[0]}', 'wb') as f:
        f.write(b'broken')
    cfg = make_cfg(new_root, 'DATASETS.ON_BAD_IMAGE', 'skip', 'DATALOADER.NUM_WORKERS', 2)
    data = make_dataloader(cfg)
    assert data.num_query == 5 and data.dataset.num_skipped == 1
    assert sum(len(b[4]) for b in data.val_loader) == 5 + 16
    # 'error' (the default) stops naming the file; no workers here: after a worker raised,
    # torch's loader shutdown waits 5 s per worker
    with pytest.raises(ReIDError, match='cannot read image .*' + query[0]):
        list(make_dataloader(make_cfg(new_root)).val_loader)


def test_evaluation_only_loaders_need_no_valid_training_batch(demo):
    root, _ = demo
    cfg = make_cfg(root, 'SOLVER.IMS_PER_BATCH', 7)  # not a multiple of K: no PK batch exists
    with pytest.raises(ReIDError, match='multiple'):
        make_dataloader(cfg)
    data = make_dataloader(cfg, training=False)
    assert data.train_loader is None and data.train_eval_loader is None
    assert len(data.val_loader.dataset) == len(data.dataset.query) + len(data.dataset.gallery)
    assert data.num_classes == data.dataset.num_train_pids


def _two_epochs(loader):
    out = []
    for epoch in (1, 2):
        loader.sampler.set_epoch(epoch)
        out.append(torch.cat([images for images, *_ in loader]))
    return out


def test_augmentation_follows_the_sampler_not_the_workers(demo):
    """Each item's augmentation is drawn from its own seed: the same images with no workers,
    or with two workers kept alive across epochs; a new epoch draws new augmentations."""
    root, _ = demo
    aug = ('INPUT.PROB', 0.5, 'INPUT.RE_PROB', 0.5)
    in_process = make_dataloader(make_cfg(root, *aug)).train_loader
    state = torch.get_rng_state()
    first = _two_epochs(in_process)
    assert torch.equal(torch.get_rng_state(), state)  # the training's own generators untouched
    workers = make_dataloader(make_cfg(root, *aug, 'DATALOADER.NUM_WORKERS', 2)).train_loader
    assert workers.persistent_workers
    second = _two_epochs(workers)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    plain = make_dataloader(make_cfg(root, 'INPUT.PROB', 0, 'INPUT.RE_PROB', 0)).train_loader
    assert not torch.equal(first[0], _two_epochs(plain)[0])  # augmentation did happen
    assert not torch.equal(first[0], first[1])
