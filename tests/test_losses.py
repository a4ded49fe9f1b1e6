"""Losses against hand-worked values on tiny tensors, and invariants on random data."""
import collections
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import load_config
from loss import (CenterLoss, ClusterMemory, CrossEntropy, CrossEntropyLabelSmooth, SupConLoss,
                  TripletLoss, compute_centroids, image_to_text_logits, make_loss)
from utils.errors import ReIDError

LN2, LN3 = math.log(2), math.log(3)


def test_label_smoothing_hand_values():
    # row 0: logits (0, 0, ln2) -> p = (1/4, 1/4, 1/2), target 2, eps 0.1, K 3:
    #   q = (0.1/3, 0.1/3, 0.9 + 0.1/3);  -sum q log p = ln2 * (0.4/3 + 0.9 + 0.1/3)
    #   = ln2 * 16/15 = 0.739357
    # row 1: logits 0 -> p uniform, -sum q log p = ln3 = 1.098612 whatever the target
    # mean over the batch: 0.918985
    logits = torch.tensor([[0.0, 0.0, LN2], [0.0, 0.0, 0.0]])
    target = torch.tensor([2, 0])
    value = CrossEntropyLabelSmooth(num_classes=3, epsilon=0.1)(logits, target)
    assert value.item() == pytest.approx(0.9189846406, abs=1e-6)
    # without smoothing: (-ln 1/2 + ln3) / 2 = ln6 / 2 = 0.895880
    assert CrossEntropy()(logits, target).item() == pytest.approx(math.log(6) / 2, abs=1e-6)


def test_supcon_repeated_labels_hand_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    la, lb = torch.tensor([0, 1]), torch.tensor([0, 1, 0])
    loss = SupConLoss()
    # a->b: row 0 logits (1, 0, 1), positives j=0,2: mean log p = 1 - ln(2e+1) = -0.861995
    #       row 1 logits (0, 1, 0), positive j=1:    log p = 1 - ln(e+2)  = -0.551445
    #       loss = (0.861995 + 0.551445) / 2 = 0.706720
    assert loss(a, b, la, lb).item() == pytest.approx(0.7067197590, abs=1e-6)
    # b->a: every row has logits (1, 0) or (0, 1) with its positive at the 1: 1 - ln(e+1)
    #       loss = ln(e+1) - 1 = 0.313262
    assert loss(b, a, lb, la).item() == pytest.approx(0.3132616875, abs=1e-6)


def test_supcon_matches_upstream_formula_on_random_data():
    torch.manual_seed(0)
    a, b = torch.randn(12, 8), torch.randn(12, 8)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])
    logits = a @ b.t()
    logits = logits - logits.max(1, keepdim=True).values
    log_prob = logits - torch.log(torch.exp(logits).sum(1, keepdim=True))
    mask = (labels[:, None] == labels[None, :]).float()
    expected = -((mask * log_prob).sum(1) / mask.sum(1)).mean()
    assert SupConLoss()(a, b, labels, labels).item() == pytest.approx(expected.item(), abs=1e-6)


def test_image_to_text_logits():
    img, text = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert image_to_text_logits(img, text).tolist() == [[11.0, 1.0]]


def _line_feats():
    # points 0, 1 (identity 0) and 3, 7 (identity 1) on a line
    return torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]]), torch.tensor([0, 0, 1, 1])


def test_triplet_batch_hard_hand_values():
    feats, labels = _line_feats()
    # hardest positive / nearest negative per anchor: (1, 3), (1, 2), (4, 2), (4, 6)
    loss, ap, an = TripletLoss(margin=0.3)(feats, labels)
    assert ap.tolist() == pytest.approx([1, 1, 4, 4], abs=1e-5)
    assert an.tolist() == pytest.approx([3, 2, 2, 6], abs=1e-5)
    # relu(ap - an + 0.3) = (0, 0, 2.3, 0) -> mean 0.575
    assert loss.item() == pytest.approx(0.575, abs=1e-5)
    # soft margin: mean log(1 + exp(ap - an)) = (2 log(1+e^-2) + log(1+e^-1) + log(1+e^2)) / 4
    #            = (2 * 0.126928 + 0.313262 + 2.126928) / 4 = 0.673511
    soft, _, _ = TripletLoss(margin=None)(feats, labels)
    assert soft.item() == pytest.approx(0.6735114302, abs=1e-5)


def test_triplet_mining_matches_upstream_on_pk_batch():
    torch.manual_seed(1)
    feats = torch.randn(16, 5)
    labels = torch.arange(4).repeat_interleave(4)
    _, ap, an = TripletLoss(0.3)(feats, labels)
    d = ((feats[:, None] - feats[None]) ** 2).sum(-1).clamp(min=1e-12).sqrt()
    pos = labels[:, None] == labels[None]
    assert torch.allclose(ap, d[pos].view(16, -1).max(1).values, atol=1e-5)
    assert torch.allclose(an, d[~pos].view(16, -1).min(1).values, atol=1e-5)


def test_center_loss_hand_values():
    center = CenterLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        center.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    # |(3,4) - (0,0)|^2 = 25, |(1,1) - (1,1)|^2 = 0 -> clamp 1e-12 -> mean 12.5
    value = center(torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([0, 1]))
    assert value.item() == pytest.approx(12.5, abs=1e-6)


def _outputs():
    feats, labels = _line_feats()
    zeros = torch.zeros(4, 3)
    return {'logits': [zeros, zeros.clone()], 'feats': [feats, feats.clone()]}, labels


def test_make_loss_total_hand_values():
    cfg = load_config('', ['MODEL.METHOD', 'clipreid', 'MODEL.ID_LOSS_WEIGHT', '0.25'])
    loss_fn = make_loss(cfg, num_classes=3)
    outputs, labels = _outputs()
    total, parts = loss_fn(outputs, labels, i2t_logits=torch.zeros(4, 3))
    # id: zero logits -> ln3 per head, 2 heads, weight 0.25 -> 0.5 ln3 = 0.549306
    # triplet (margin 0.3): 0.575 per feature, 2 features -> 1.15
    # i2t: ln3 = 1.098612;  total = 1.5 ln3 + 1.15 = 2.797918
    assert total.item() == pytest.approx(2.7979184330, abs=1e-5)
    assert parts['id'].item() == pytest.approx(0.5 * LN3, abs=1e-6)
    assert parts['triplet'].item() == pytest.approx(1.15, abs=1e-5)
    assert parts['i2t'].item() == pytest.approx(LN3, abs=1e-6)
    assert loss_fn.center is None and 'center' not in parts
    total, parts = loss_fn(outputs, labels)
    assert 'i2t' not in parts and total.item() == pytest.approx(0.5 * LN3 + 1.15, abs=1e-5)


def test_make_loss_options():
    outputs, labels = _outputs()
    soft = make_loss(load_config('', ['MODEL.NO_MARGIN', 'True']), 3)
    # soft margin 0.673511 per feature; plain ID weight 1: 2 ln3
    assert soft(outputs, labels)[1]['triplet'].item() == pytest.approx(2 * 0.6735114302, abs=1e-5)
    off = make_loss(load_config('', ['MODEL.IF_LABELSMOOTH', 'off']), 3)
    logits = torch.tensor([[0.0, 0.0, LN2]] * 4)
    _, parts = off({'logits': [logits], 'feats': outputs['feats']}, torch.tensor([2, 2, 2, 2]))
    assert parts['id'].item() == pytest.approx(LN2, abs=1e-6)  # plain CE of p = 1/2
    pcl = make_loss(load_config('', ['MODEL.METHOD', 'pcl']), 3)
    _, parts = pcl(outputs, labels)
    assert set(parts) == {'id'}


def test_make_loss_center_uses_last_feature_and_stage_weight():
    cfg = load_config('', ['MODEL.METHOD', 'clipreid', 'MODEL.IF_WITH_CENTER', 'yes',
                           'SOLVER.STAGE2.CENTER_LOSS_WEIGHT', '0.5'])
    loss_fn = make_loss(cfg, num_classes=3, feat_dim=2)
    with torch.no_grad():
        loss_fn.center.centers.zero_()
    outputs, labels = _outputs()
    outputs['feats'][0] = torch.zeros(4, 2)  # only feats[-1] feeds the center loss
    total, parts = loss_fn(outputs, labels)
    # squared norms 0 (clamped 1e-12), 1, 9, 49 -> mean 14.75, weight 0.5 -> 7.375
    assert parts['center'].item() == pytest.approx(7.375, abs=1e-5)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), abs=1e-5)
    total.backward()
    grad = loss_fn.center.centers.grad.clone()
    loss_fn.unweight_center_grads()
    assert torch.allclose(loss_fn.center.centers.grad, grad / 0.5)
    with pytest.raises(ValueError, match='feat_dim'):
        make_loss(cfg, num_classes=3)


@pytest.mark.parametrize('key,value', [('MODEL.ID_LOSS_TYPE', 'arcface'),
                                       ('MODEL.METRIC_LOSS_TYPE', 'triplet_center'),
                                       ('MODEL.IF_LABELSMOOTH', 'yes')])
def test_make_loss_rejects_unsupported_values(key, value):
    with pytest.raises(ReIDError, match=f'{key}.*{value}'):
        make_loss(load_config('', [key, value]), 3)


def test_cluster_memory_loss_hand_value():
    memory = ClusterMemory(2, 2, temp=0.05)
    memory.build(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))  # rows are normalised
    assert memory.features.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    feats = torch.tensor([[3.0, 4.0]], requires_grad=True)
    # normalised (0.6, 0.8) -> logits (12, 16); CE for class 1 = log(1 + e^-4) = 0.018150
    value = memory(feats, torch.tensor([1]))
    assert value.item() == pytest.approx(0.0181499279, abs=1e-6)
    value.backward()
    assert feats.grad is not None and 'features' in memory.state_dict()


@pytest.mark.parametrize('mode,expected', [
    # hard: sims with (1,0) are 0.6 and 0.8 -> take (0.6, 0.8);
    #   0.2 (1,0) + 0.8 (0.6,0.8) = (0.68, 0.64), /sqrt(0.872) -> (0.728200, 0.685365)
    ('hard', [0.7281999927, 0.6853646990]),
    # sequential: first (0.6, 0.8) as above -> (0.728200, 0.685365); then (0.8, 0.6):
    #   0.2 (0.728200, 0.685365) + 0.8 (0.8, 0.6) = (0.785640, 0.617073), /0.999004 -> below
    ('sequential', [0.7864232063, 0.6176880598])])
def test_cluster_memory_update_hand_values(mode, expected):
    memory = ClusterMemory(2, 2, momentum=0.2, mode=mode)
    memory.build(torch.eye(2))
    memory.update(torch.tensor([[6.0, 8.0], [0.8, 0.6]]), torch.tensor([0, 0]))
    assert memory.features[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert memory.features[1].tolist() == [0.0, 1.0]  # identity absent from the batch


def _loop_update(features, feats, targets, momentum, mode):
    """Reference: upstream CM_Hard's per-identity Python loop, or CM's per-sample loop."""
    features = features.clone()
    x = F.normalize(feats, dim=1)
    if mode == 'sequential':
        for row, label in zip(x, targets.tolist()):
            features[label] = momentum * features[label] + (1 - momentum) * row
            features[label] /= features[label].norm()
        return features
    groups = collections.defaultdict(list)
    for row, label in zip(x, targets.tolist()):
        groups[label].append(row)
    for label, rows in groups.items():
        sims = [row.unsqueeze(0).mm(features[label].unsqueeze(0).t())[0, 0].item()
                for row in rows]
        chosen = rows[int(np.argmin(np.array(sims)))]
        features[label] = momentum * features[label] + (1 - momentum) * chosen
        features[label] /= features[label].norm()
    return features


@pytest.mark.parametrize('mode', ['hard', 'sequential'])
def test_cluster_memory_vectorised_update_matches_loop(mode):
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        memory = ClusterMemory(8, 10, momentum=0.2, mode=mode)
        memory.build(torch.randn(10, 8, generator=gen))
        targets = torch.randint(0, 6, (32,), generator=gen)  # repeated ids, 4 ids absent
        feats = torch.randn(32, 8, generator=gen)
        for i, j in ((0, 5), (3, 9), (10, 20)):  # exact duplicates make ties
            feats[j], targets[j] = feats[i], targets[i]
        expected = _loop_update(memory.features, feats, targets, 0.2, mode)
        memory.update(feats, targets)
        assert torch.allclose(memory.features, expected, atol=1e-6, rtol=0)


def test_cluster_memory_hard_tie_takes_first_occurrence():
    memory = ClusterMemory(2, 1, momentum=0.5)
    memory.build(torch.tensor([[1.0, 0.0]]))
    # both samples have similarity 0 with the row; the first one (0, 1) must be chosen
    memory.update(torch.tensor([[0.0, 1.0], [0.0, -1.0]]), torch.tensor([0, 0]))
    s = 1 / math.sqrt(2)  # 0.5 (1,0) + 0.5 (0,1) normalised
    assert memory.features[0].tolist() == pytest.approx([s, s], abs=1e-6)


def test_compute_centroids_matches_loop_and_ignores_unlabelled():
    torch.manual_seed(4)
    feats, labels = torch.randn(30, 6), torch.randint(-1, 5, (30,))
    labels[:5] = torch.arange(5)
    normed = F.normalize(feats, dim=1)
    expected = torch.stack([F.normalize(normed[labels == c].mean(0), dim=0) for c in range(5)])
    centroids = compute_centroids(feats, labels, 6)
    assert torch.allclose(centroids[:5], expected, atol=1e-6)
    assert centroids[5].abs().sum() == 0  # no sample for identity 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cluster_memory_update_does_not_sync_on_gpu():
    memory = ClusterMemory(16, 50).cuda()
    memory.build(torch.randn(50, 16, device='cuda'))
    feats, targets = torch.randn(64, 16, device='cuda'), torch.randint(0, 50, (64,), device='cuda')
    for mode in ('hard',):  # 'sequential' reads the number of occurrences on the host
        memory.mode = mode
        expected = _loop_update(memory.features.cpu(), feats.cpu(), targets.cpu(), 0.2, mode)
        torch.cuda.set_sync_debug_mode('error')
        try:
            memory.update(feats, targets)
        finally:
            torch.cuda.set_sync_debug_mode('default')
        assert torch.allclose(memory.features.cpu(), expected, atol=1e-5, rtol=0)
