"""CameraProxyMemory (CAP / O2CAP losses over camera-aware proxies) on a hand-worked case.

Four unit proxies in the plane: p0 at 0 deg and p1 at 60 deg form cluster 0 (cameras 0, 1);
p2 at 180 deg and p3 at -30 deg form cluster 1 (cameras 0, 1). One sample at 20 deg whose
own proxy is p0: s = (cos 20, cos 40, cos 160, cos 50) = (.940, .766, -.940, .643), and
p0 . p = (1, .5, -1, .866).
"""
import math

import pytest
import torch

from loss import CameraProxyMemory

DEG = [0, 60, 180, -30]
S = [math.cos(math.radians(20 - d)) for d in DEG]
OWN = [math.cos(math.radians(0 - d)) for d in DEG]  # p0 . p_j


def memory(temp=1.0, negatives=1, positives=1, balance=0.5):
    mem = CameraProxyMemory(2, proxy_cluster=[0, 0, 1, 1], proxy_camera=[0, 1, 0, 1], temp=temp,
                            negatives=negatives, positives=positives, balance=balance)
    mem.build(torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in DEG]))
    return mem


def sample(scale=3.0):  # the norm does not matter: features are normalised
    angle = math.radians(20)
    return torch.tensor([[scale * math.cos(angle), scale * math.sin(angle)]], requires_grad=True)


def nll(selected, positives, temp):
    """mean over positives of -log softmax over the selected proxies."""
    log_z = math.log(sum(math.exp(S[j] / temp) for j in selected))
    return sum(log_z - S[j] / temp for j in positives) / len(positives)


@pytest.mark.parametrize('temp', [1.0, 0.07])
def test_offline_and_online_losses_by_hand(temp):
    # offline: positives p0, p1 (cluster 0); hardest negative by s: p3 (.643 > -.940)
    # online: h = 0.5 s + 0.5 p0.p = (.970, .633, -.970, .755); best of camera 0 is p0, of
    # camera 1 p3; the top one of these, p0, is the positive; the hardest other by h is p3
    x = sample()
    offline, online = memory(temp).losses(x, torch.tensor([0]))
    assert offline.item() == pytest.approx(nll([0, 1, 3], [0, 1], temp), rel=1e-5)
    assert online.item() == pytest.approx(nll([0, 3], [0], temp), rel=1e-5)
    (offline + online).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_two_online_positives_balance_and_every_negative():
    # positives=2: the best proxy of both cameras (p0, p3); the hardest other by h is p1
    offline, online = memory(positives=2).losses(sample(), torch.tensor([0]))
    assert online.item() == pytest.approx(nll([0, 1, 3], [0, 3], 1.0), rel=1e-5)
    # balance 1: h = s, so camera 1's best is p1 (.766 > .643) and the hardest other p3
    offline, online = memory(positives=2, balance=1.0).losses(sample(), torch.tensor([0]))
    assert online.item() == pytest.approx(nll([0, 1, 3], [0, 1], 1.0), rel=1e-5)
    # negatives beyond the proxies available: every proxy is in the softmax
    offline, online = memory(negatives=50).losses(sample(), torch.tensor([0]))
    assert offline.item() == pytest.approx(nll([0, 1, 2, 3], [0, 1], 1.0), rel=1e-5)
    assert online.item() == pytest.approx(nll([0, 1, 2, 3], [0], 1.0), rel=1e-5)


def test_batch_mean_and_forward_is_the_sum():
    mem = memory()
    x = torch.cat([sample(), torch.tensor([[-1.0, 0.05]])])  # the second sample near p2
    targets = torch.tensor([0, 2])
    offline, online = mem.losses(x, targets)
    first = mem.losses(x[:1], targets[:1])
    second = mem.losses(x[1:], targets[1:])
    assert offline.item() == pytest.approx((first[0] + second[0]).item() / 2, rel=1e-6)
    assert online.item() == pytest.approx((first[1] + second[1]).item() / 2, rel=1e-6)
    assert mem(x, targets).item() == pytest.approx((offline + online).item(), rel=1e-6)


def test_update_moves_the_target_proxy_only():
    mem = memory()
    before = mem.features.clone()
    mem.update(sample(), torch.tensor([1]))
    assert torch.equal(mem.features[[0, 2, 3]], before[[0, 2, 3]])
    expected = torch.nn.functional.normalize(
        0.2 * before[1] + 0.8 * torch.tensor([math.cos(math.radians(20)),
                                              math.sin(math.radians(20))]), dim=0)
    assert torch.allclose(mem.features[1], expected, atol=1e-6)
    assert {k for k in mem.state_dict()} == {'features', 'proxy_cluster', 'camera_mask'}


@pytest.mark.parametrize('proxies', [False, True])
def test_every_rank_builds_its_memory_from_rank_0s_centroids(monkeypatch, proxies):
    """On a GPU, index_add_ may sum the centroids in another order on each rank: the memory,
    cluster or camera-proxy, is built from rank 0's broadcast centroids."""
    import functools
    from types import SimpleNamespace

    from processor.pcl import PCLTrainer
    from utils import distributed as du
    rank0 = torch.nn.functional.normalize(torch.randn(4, 2, generator=torch.Generator().manual_seed(0)))
    monkeypatch.setattr(du, 'broadcast_from_main', lambda centroids: rank0.clone())
    trainer = SimpleNamespace(memory_args=dict(temp=0.05, momentum=0.2, mode='hard'), device='cpu')
    memory_type = functools.partial(CameraProxyMemory, proxy_cluster=[0, 0, 1, 1],
                                    proxy_camera=[0, 1, 0, 1]) if proxies else None
    memory = PCLTrainer.make_memory(trainer, torch.randn(8, 2), torch.tensor([0, 1, 2, 3] * 2), 4,
                                    memory_type)
    assert isinstance(memory, CameraProxyMemory) == proxies
    assert torch.allclose(memory.features, rank0, atol=1e-6)  # not the local centroids
