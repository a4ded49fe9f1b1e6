"""How the configured method parts are wired into the trainers, each pinned so that breaking
the wiring turns a test red (the parts themselves are pinned in test_method_parts,
test_losses, test_clustering and test_camera_proxy_memory):

- PCL's centroid memory, supervised and unsupervised, and the clustering are built from the
  BN-neck features the loss sees (given non-trivial BN statistics here, so that they differ
  from the features before the neck), without SIE and whatever TEST.NECK_FEAT says;
- the CLUSTER values (K1, K2, EPS, MIN_SAMPLES) reach the clustering call;
- camera proxies are keyed by (cluster, camera id) of each image: the memory holds one
  centroid per pair, and the PK batches' targets are those proxies;
- config values whose effect nothing else checked: MODEL.PCL_TEMPERATURE (supervised and
  unsupervised), MODEL.PCL_LOSS_WEIGHT (unsupervised), CLUSTER.PROXY_NEGATIVES /
  PROXY_POSITIVES / PROXY_BALANCE and the memory's temperature, momentum and update rule
  in the camera-proxy memory, DATALOADER.NUM_INSTANCE of the pseudo-identity batches, and
  SOLVER.MARGIN of the triplet term.
"""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import processor.pcl_unsup as pcl_unsup
from _e2e_helpers import build, demo_root, load_cfg, tiny_clip
from config import load_config
from loss import CameraProxyMemory, make_loss
from processor.pcl import PCLTrainer
from processor.pcl_unsup import UnsupervisedPCLTrainer
from solver import make_optimizer, make_scheduler
from utils.clustering import cluster_features

BATCH = ['SOLVER.IMS_PER_BATCH', 16, 'DATALOADER.NUM_INSTANCE', 4, 'INPUT.PROB', 0,
         'INPUT.RE_PROB', 0, 'INPUT.PADDING', 0, 'MODEL.NAME', 'tiny-ViT']
# Non-default clustering values, all different, so a swapped or dropped one shows.
CLUSTER = dict(K1=7, K2=3, EPS=0.45, MIN_SAMPLES=3)
CLUSTER_OPTS = [x for k, v in CLUSTER.items() for x in (f'CLUSTER.{k}', v)]


def _trainer(tmp_path_factory, cls, config, *opts, neck_stats=True):
    """A trainer of `cls` on the generated Market layout and the tiny ViT (not yet prepared);
    its BN-necks are given random running statistics and affine parameters."""
    root, clip = demo_root(tmp_path_factory), tiny_clip(tmp_path_factory, 'vit')
    cfg = load_cfg(config, root, clip, tmp_path_factory.mktemp('wiring'), *BATCH, *opts)
    runtime, data, model = build(cfg, seed=0)
    if neck_stats:
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for bn in (model.bottleneck, model.bottleneck_proj):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=gen))
                bn.running_var.copy_(0.2 + 3 * torch.rand(n, generator=gen))
                bn.weight.copy_(0.2 + 2 * torch.rand(n, generator=gen))
                bn.bias.copy_(torch.randn(n, generator=gen))
    if cfg.MODEL.UNSUPERVISED:
        model.classifier.requires_grad_(False)  # as train_pcl does
    optimizer, _ = make_optimizer(cfg.SOLVER, model)
    scheduler = make_scheduler(cfg.SOLVER, optimizer, 'multistep')
    trainer = cls(cfg, cfg.SOLVER, model, optimizer, scheduler, runtime, data)
    trainer.curves = type('NoCurves', (), {'add': lambda *args: None})()
    return trainer


def _bn(x, bn):
    """Eval-mode BatchNorm1d written from its formula."""
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


@torch.no_grad()
def _hand_features(trainer):
    """(BN-neck features, features before the neck, pids, camids) of the training set in the
    train_eval loader's order, by hand: eval mode, no SIE labels."""
    net = trainer.net
    was_training = net.training
    net.eval()
    after, before, pids, camids = [], [], [], []
    for images, pid, camid, _ in (b[:4] for b in trainer.data.train_eval_loader):
        _, feat, proj = net.image_encoder(images.to(trainer.device), None)
        after.append(torch.cat([_bn(feat, net.bottleneck), _bn(proj, net.bottleneck_proj)], 1))
        before.append(torch.cat([feat, proj], 1))
        pids.append(pid)
        camids.append(camid)
    net.train(was_training)
    return torch.cat(after), torch.cat(before), torch.cat(pids), torch.cat(camids)


def _centroids(feats, groups):
    """{group: normalize(mean of normalized features)} for every group id >= 0."""
    unit = F.normalize(feats.float(), dim=1)
    out = {}
    for g in sorted(set(groups.tolist()) - {-1}):
        out[g] = F.normalize(unit[torch.as_tensor(groups) == g].mean(0), dim=0)
    return out


def _pseudo_labels(pids, camids):
    """Fixed pseudo-labels for the spied clustering: the true identities renumbered (so that
    they are not the pids), one camera of every fifth identity left out as outliers."""
    pids = pids.numpy()
    order = {p: i for i, p in enumerate(sorted(set(pids.tolist()), reverse=True))}
    labels = np.array([order[p] for p in pids], dtype=np.int64)
    labels[(labels % 5 == 0) & (camids.numpy() == 1)] = -1
    return labels


class SpyClustering:
    """Stands in for cluster_features in processor.pcl_unsup: records the features and the
    clustering values it is called with, returns fixed labels."""

    def __init__(self, labels):
        self.labels, self.calls = labels, []

    def __call__(self, features, *args, **kwargs):
        bound = inspect.signature(cluster_features).bind(features, *args, **kwargs)
        bound.apply_defaults()
        self.calls.append(dict(bound.arguments))
        return self.labels.copy()


def _unsup(tmp_path_factory, monkeypatch, *opts):
    trainer = _trainer(tmp_path_factory, UnsupervisedPCLTrainer, 'pcl/market1501_unsup.yml',
                       'TEST.NECK_FEAT', 'before', *CLUSTER_OPTS, *opts)
    after, before, pids, camids = _hand_features(trainer)
    spy = SpyClustering(_pseudo_labels(pids, camids))
    monkeypatch.setattr(pcl_unsup, 'cluster_features', spy)
    trainer.prepare_epoch(1)
    return trainer, spy, after, before, camids


# --------------------------------------------------------- 1. features of memory and clustering
@pytest.mark.parametrize('neck_feat', ['after', 'before'])
def test_pcl_memory_is_built_from_bn_neck_features(tmp_path_factory, neck_feat):
    """Each memory row is the normalised mean of the normalised BN-neck features of its
    identity (eval-mode BN with its running statistics), not of the features before the
    neck, nor of the test feature TEST.NECK_FEAT names, nor with SIE."""
    trainer = _trainer(tmp_path_factory, PCLTrainer, 'pcl/market1501.yml',
                       'TEST.NECK_FEAT', neck_feat, 'MODEL.SIE_CAMERA', True)
    after, before, pids, _ = _hand_features(trainer)
    trainer.prepare_epoch(1)
    memory = trainer.memory.features
    assert memory.shape[0] == trainer.data.num_classes == len(set(pids.tolist()))
    expected, pre_neck = _centroids(after, pids), _centroids(before, pids)
    for pid, row in expected.items():
        assert torch.allclose(memory[pid], row, atol=1e-5), pid
    gap = max((memory[p] - pre_neck[p]).abs().max().item() for p in pre_neck)
    assert gap > 1e-2  # the check above tells the two apart
    assert trainer.net.training  # the memory pass leaves the model in train mode


def test_clustering_and_unsupervised_memory_use_bn_neck_features(tmp_path_factory, monkeypatch):
    trainer, spy, after, before, _ = _unsup(tmp_path_factory, monkeypatch)
    assert len(spy.calls) == 1
    clustered = torch.as_tensor(spy.calls[0]['features']).cpu().float()
    assert torch.allclose(clustered, after, atol=1e-5)
    assert not torch.allclose(F.normalize(clustered, dim=1), F.normalize(before, dim=1),
                              atol=1e-2)
    labels = spy.labels
    expected = _centroids(after, labels)
    memory = trainer.memory.features
    assert memory.shape[0] == len(expected) == labels.max() + 1
    for label, row in expected.items():
        assert torch.allclose(memory[label], row, atol=1e-5), label


# ------------------------------------------------------------- 2. CLUSTER values reach clustering
def test_cluster_values_reach_the_clustering_call(tmp_path_factory, monkeypatch):
    trainer, spy, _, _, _ = _unsup(tmp_path_factory, monkeypatch, 'CLUSTER.PERIOD', 2)
    call = spy.calls[0]
    assert (call['k1'], call['k2'], call['eps'], call['min_samples']) == (
        CLUSTER['K1'], CLUSTER['K2'], CLUSTER['EPS'], CLUSTER['MIN_SAMPLES'])
    np.testing.assert_array_equal(trainer.labels, spy.labels)
    trainer.prepare_epoch(2)  # CLUSTER.PERIOD 2: epoch 2 keeps the labels
    assert len(spy.calls) == 1
    trainer.prepare_epoch(3)
    assert len(spy.calls) == 2


def test_cluster_eps_and_min_samples_change_the_outcome(tmp_path_factory):
    """The real clustering through the trainer equals scikit-learn's DBSCAN with the
    configured EPS and MIN_SAMPLES on the dense Jaccard matrix of the configured K1, K2 (the
    one re-ranking computes); stricter values leave more images out."""
    from sklearn.cluster import DBSCAN

    from utils.reranking import re_ranking
    trainer = _trainer(tmp_path_factory, UnsupervisedPCLTrainer, 'pcl/market1501_unsup.yml',
                       neck_stats=False)
    feats, pids = trainer.train_features()
    base = trainer.cfg
    outliers, dense = {}, {}
    for k1, k2, eps, min_samples in ((7, 3, 0.45, 3), (7, 3, 0.2, 3), (7, 3, 0.45, 5),
                                     (7, 3, 0.8, 3), (12, 2, 0.45, 3)):
        cfg = base.clone()
        cfg.defrost()
        cfg.CLUSTER.K1, cfg.CLUSTER.K2 = k1, k2
        cfg.CLUSTER.EPS, cfg.CLUSTER.MIN_SAMPLES = eps, min_samples
        cfg.freeze()
        trainer.cfg = cfg
        labels = trainer.cluster(feats, pids, 1)
        if (k1, k2) not in dense:
            dense[k1, k2] = np.clip(re_ranking(F.normalize(feats, dim=1), None, k1, k2, 0.0),
                                    0, None)
        expected = DBSCAN(eps=eps, min_samples=min_samples,
                          metric='precomputed').fit_predict(dense[k1, k2])
        np.testing.assert_array_equal(labels, expected)
        outliers[(k1, k2, eps, min_samples)] = int((labels < 0).sum())
    trainer.cfg = base
    assert outliers[(7, 3, 0.2, 3)] > outliers[(7, 3, 0.45, 3)] < outliers[(7, 3, 0.45, 5)]
    assert outliers[(7, 3, 0.8, 3)] < outliers[(7, 3, 0.45, 3)]


# ---------------------------------------------------------------- 3. camera proxies by camera id
def test_camera_proxies_are_keyed_by_cluster_and_camera(tmp_path_factory, monkeypatch):
    trainer, spy, after, _, camids = _unsup(
        tmp_path_factory, monkeypatch, 'CLUSTER.LOSS', 'camera_proxy')
    labels, camids = spy.labels, camids.numpy()
    records = trainer.data.dataset.train
    assert [r[2] for r in records] == camids.tolist()
    assert len({r[3] for r in records}) < len(set(camids.tolist()))  # views are not cameras
    memory = trainer.memory
    assert isinstance(memory, CameraProxyMemory)
    targets = trainer.targets()[0]
    kept = labels >= 0
    np.testing.assert_array_equal(targets < 0, ~kept)
    # one proxy per (cluster, camera) pair present, and every image of a pair in it
    pairs = {(int(c), int(k)) for c, k in zip(labels[kept], camids[kept])}
    assert memory.features.shape[0] == len(pairs)
    proxy_of = {}
    for pair, target in zip(zip(labels[kept].tolist(), camids[kept].tolist()), targets[kept]):
        assert proxy_of.setdefault(pair, int(target)) == int(target), pair
    assert sorted(proxy_of.values()) == list(range(len(pairs)))
    cameras = sorted(set(camids[kept].tolist()))
    expected = _centroids(after, targets)
    for (cluster, cam), proxy in proxy_of.items():
        assert int(memory.proxy_cluster[proxy]) == cluster
        assert memory.camera_mask[:, proxy].tolist() == [c == cam for c in cameras]
        assert torch.allclose(memory.features[proxy], expected[proxy], atol=1e-5)
    # the PK batches draw proxies: every image's target is its own (cluster, camera) proxy
    _, target, cam, _ = trainer.to_device(next(iter(trainer.batches(1))))[:4]
    column = memory.camera_mask[:, target].float().argmax(0)
    assert [cameras[i] for i in column.tolist()] == cam.tolist()
    assert set(target.tolist()) <= set(proxy_of.values())


# ------------------------------------------------------------------- config values' effects
def test_pcl_temperature_reaches_the_supervised_memory_loss(tmp_path_factory):
    trainer = _trainer(tmp_path_factory, PCLTrainer, 'pcl/market1501.yml',
                       'MODEL.PCL_TEMPERATURE', 0.2, 'MODEL.PCL_LOSS_WEIGHT', 1.0,
                       'MODEL.ID_LOSS_WEIGHT', 0.0, neck_stats=False)
    trainer.prepare_epoch(1)
    trainer.model.train()
    batch = trainer.to_device(next(iter(trainer.batches(1))))
    feats = trainer.model(batch[0])['feats'][0]
    logits = F.normalize(feats, dim=1) @ trainer.memory.features.t()
    loss, parts = trainer.train_step(batch)
    assert parts['pcl'].item() == pytest.approx(F.cross_entropy(logits / 0.2, batch[1]).item(),
                                                rel=1e-5)
    assert parts['pcl'].item() != pytest.approx(F.cross_entropy(logits / 0.05, batch[1]).item(),
                                                rel=1e-2)


def test_unsupervised_loss_is_weighted_memory_loss_at_the_configured_temperature(
        tmp_path_factory, monkeypatch):
    trainer, _, _, _, _ = _unsup(tmp_path_factory, monkeypatch, 'MODEL.PCL_TEMPERATURE', 0.2,
                                 'MODEL.PCL_LOSS_WEIGHT', 0.3)
    trainer.model.train()
    batch = trainer.to_device(next(iter(trainer.batches(1))))
    feats = trainer.model(batch[0])['feats'][0]
    memory_ce = F.cross_entropy(F.normalize(feats, dim=1) @ trainer.memory.features.t() / 0.2,
                                batch[1])
    loss, parts = trainer.train_step(batch)
    assert parts['pcl'].item() == pytest.approx(memory_ce.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.3 * memory_ce.item(), rel=1e-5)


def test_proxy_and_memory_values_reach_the_camera_proxy_memory(tmp_path_factory, monkeypatch):
    """CLUSTER.PROXY_* and the memory's temperature, momentum and update rule: the loss of a
    step equals a CameraProxyMemory built by hand with them, and not one with the defaults."""
    values = dict(negatives=5, positives=2, balance=0.6, temp=0.3, momentum=0.7,
                  mode='sequential')
    trainer, spy, after, _, _ = _unsup(
        tmp_path_factory, monkeypatch, 'CLUSTER.LOSS', 'camera_proxy',
        'CLUSTER.PROXY_NEGATIVES', 5, 'CLUSTER.PROXY_POSITIVES', 2, 'CLUSTER.PROXY_BALANCE', 0.6,
        'MODEL.PCL_TEMPERATURE', 0.3, 'MODEL.MEMORY_MOMENTUM', 0.7,
        'MODEL.MEMORY_UPDATE', 'sequential', 'MODEL.PCL_LOSS_WEIGHT', 0.5)
    memory = trainer.memory
    assert (memory.negatives, memory.positives, memory.balance, memory.temp, memory.momentum,
            memory.mode) == tuple(values.values())
    _, proxy_cluster, proxy_camera = trainer.targets()

    def hand_memory(**kwargs):
        mem = CameraProxyMemory(memory.features.shape[1], proxy_cluster, proxy_camera, **kwargs)
        mem.build(memory.features.clone())
        return mem

    trainer.model.train()
    batch = trainer.to_device(next(iter(trainer.batches(1))))
    feats = trainer.model(batch[0])['feats'][0]
    offline, online = hand_memory(**values).losses(feats, batch[1])
    loss, parts = trainer.train_step(batch)
    assert parts['offline'].item() == pytest.approx(offline.item(), rel=1e-5)
    assert parts['online'].item() == pytest.approx(online.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * (offline + online).item(), rel=1e-5)
    default = sum(hand_memory().losses(feats, batch[1])).item()
    assert default != pytest.approx((offline + online).item(), rel=1e-2)
    # the update: sequential momentum 0.7 over the batch's normalised features, in order
    before = memory.features.clone()
    trainer.after_step(batch)
    x = F.normalize(feats.detach().float(), dim=1)
    for row, target in zip(x, batch[1].tolist()):
        before[target] = F.normalize(0.7 * before[target] + 0.3 * row, dim=0)
    assert torch.allclose(memory.features, before, atol=1e-5)


@pytest.mark.parametrize('k', [2, 4])
def test_num_instance_shapes_the_pseudo_identity_batches(tmp_path_factory, monkeypatch, k):
    trainer, _, _, _, _ = _unsup(tmp_path_factory, monkeypatch, 'DATALOADER.NUM_INSTANCE', k)
    for n, batch in enumerate(trainer.batches(1)):
        counts = torch.bincount(batch[1])
        assert len(batch[1]) == 16 and sorted(set(counts[counts > 0].tolist())) == [k]
        if n == 2:
            break


def test_solver_margin_reaches_the_triplet_term():
    """Points 0, 1 (identity 0) and 2, 3 (identity 1) on a line: hardest positive 1 and
    nearest negative (2, 1, 1, 2) per anchor, so relu(ap - an + margin) averages to
    (0.3 -> 0.15, 0.8 -> 0.4, 1.5 -> 1.0): the configured margin, not the default."""
    feats = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    for margin, expected in ((0.3, 0.15), (0.8, 0.4), (1.5, 1.0)):
        loss_fn = make_loss(load_config('', ['MODEL.METHOD', 'baseline',
                                             'SOLVER.MARGIN', margin]), 2)
        _, parts = loss_fn({'logits': [torch.zeros(4, 2)], 'feats': [feats]}, labels)
        assert parts['triplet'].item() == pytest.approx(expected, abs=1e-5), margin
