"""The binned match ranking (utils.ranking.match_ranks) against the plain sorted algorithm,
by both ways of counting on the CPU: the fused numba loop and torch's passes (the GPU's)."""
import numpy as np
import pytest
import torch

import utils.ranking as ranking
import utils.ranking_cpu as ranking_cpu  # numba is in requirements.txt: fail, not skip
from utils.pairs import KeyIndex, pairs_to_mask
from utils.ranking import match_ranks, sorted_match_ranks

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, params=['fused', 'passes'])
def counting(request, monkeypatch):
    """Every test runs with the CPU's fused count and with torch's passes."""
    fused = request.param == 'fused'
    monkeypatch.setattr(ranking, 'FUSED_MIN_ENTRIES', 0 if fused else 1 << 62)
    return request.param


def loop_ranks(dist, q_pids, g_pids, excluded):
    """Oracle: stable argsort of each row, ignored entries dropped, 1-based match positions."""
    num, ranks = [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind='stable')
        order = order[~excluded[i][order]]
        hits = np.flatnonzero(g_pids[order] == q_pids[i]) + 1
        num.append(len(hits))
        ranks.extend(hits)
    return np.array(num), np.array(ranks, dtype=np.int64)


def random_case(rng, q, g, ids, levels=None):
    """Distances with many ties (values drawn from `levels` distinct numbers) and -0.0."""
    levels = levels or int(rng.integers(2, 50))
    dist = rng.integers(0, levels, (q, g)).astype(np.float64) / levels - 0.25
    dist[dist == 0] = -0.0 if rng.random() < 0.5 else 0.0
    q_pids, g_pids = rng.integers(0, ids, q), rng.integers(0, ids, g)
    excluded = rng.random((q, g)) < 0.1
    excluded[:, ::5] &= g_pids[None, ::5] == q_pids[:, None]  # many ignored true matches too
    return dist, q_pids, g_pids, excluded


def fast(dist, q_pids, g_pids, excluded, device='cpu'):
    rows, cols = np.nonzero(excluded)
    on = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    num, ranks = match_ranks(on(dist), on(q_pids), KeyIndex(on(g_pids)), (on(rows), on(cols)))
    return num.cpu().numpy(), ranks.cpu().numpy()


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
def test_matches_the_stable_sort_on_random_ties(dtype, device):
    rng = np.random.default_rng(0)
    for trial in range(30):
        q, g = int(rng.integers(1, 30)), int(rng.integers(1, 120))
        dist, q_pids, g_pids, excluded = random_case(rng, q, g, int(rng.integers(1, 12)))
        dist = dist.astype(dtype)
        num, ranks = fast(dist, q_pids, g_pids, excluded, device)
        num_ref, ranks_ref = loop_ranks(dist.astype(np.float64), q_pids, g_pids, excluded)
        assert np.array_equal(num, num_ref) and np.array_equal(ranks, ranks_ref), trial


def test_bfloat16_and_the_plain_algorithm_agree():
    rng = np.random.default_rng(1)
    dist, q_pids, g_pids, excluded = random_case(rng, 25, 300, 6, levels=1000)
    d = torch.tensor(dist).bfloat16()
    num, ranks = fast(d, q_pids, g_pids, excluded)
    num_ref, ranks_ref = sorted_match_ranks(d, torch.tensor(q_pids), torch.tensor(g_pids),
                                            torch.tensor(excluded))
    assert np.array_equal(num, num_ref.numpy()) and np.array_equal(ranks, ranks_ref.numpy())
    num_ref, ranks_ref = loop_ranks(d.double().numpy(), q_pids, g_pids, excluded)
    assert np.array_equal(num, num_ref) and np.array_equal(ranks, ranks_ref)


def test_all_equal_and_single_match_rows():
    # every entry shares the matches' bin; a row with one match has no span to bin by
    dist = np.zeros((3, 50), np.float32)
    dist[2] = np.linspace(-1, 1, 50)
    q_pids, g_pids = np.array([1, 2, 99]), np.arange(50) % 7
    g_pids[17] = 99
    excluded = np.zeros((3, 50), bool)
    excluded[0, :10] = True
    num, ranks = fast(dist, q_pids, g_pids, excluded)
    num_ref, ranks_ref = loop_ranks(dist, q_pids, g_pids, excluded)
    assert np.array_equal(num, num_ref) and np.array_equal(ranks, ranks_ref)
    assert ranks[-1] == 18  # row 2: its only match at index 17 of an increasing row


def test_distances_far_from_zero():
    # a small spread on a large offset: the bins are computed after subtracting the offset
    rng = np.random.default_rng(5)
    dist, q_pids, g_pids, excluded = random_case(rng, 20, 90, 5, levels=500)
    far = 1e6 + dist * 1e-2
    num, ranks = fast(far, q_pids, g_pids, excluded)
    num_ref, ranks_ref = loop_ranks(far, q_pids, g_pids, excluded)
    assert np.array_equal(num, num_ref) and np.array_equal(ranks, ranks_ref)


def test_non_finite_distances():
    rng = np.random.default_rng(2)
    dist, q_pids, g_pids, excluded = random_case(rng, 20, 80, 5)
    dist[rng.random(dist.shape) < 0.1] = np.inf
    dist[rng.random(dist.shape) < 0.1] = -np.inf
    dist[rng.random(dist.shape) < 0.1] = np.nan  # matches with nan: the plain algorithm
    num, ranks = fast(dist.astype(np.float32), q_pids, g_pids, excluded)
    num_ref, ranks_ref = sorted_match_ranks(torch.tensor(dist, dtype=torch.float32),
                                            torch.tensor(q_pids),
                                            torch.tensor(g_pids), torch.tensor(excluded))
    assert np.array_equal(num, num_ref.numpy()) and np.array_equal(ranks, ranks_ref.numpy())
    finite_matches = np.where(np.isnan(dist) & (g_pids[None] == q_pids[:, None]), 0.0, dist)
    num, ranks = fast(finite_matches.astype(np.float32), q_pids, g_pids, excluded)
    num_ref, ranks_ref = loop_ranks(finite_matches, q_pids, g_pids, excluded)  # nan sorts last
    assert np.array_equal(num, num_ref) and np.array_equal(ranks, ranks_ref)


def test_row_steps_that_do_not_divide_the_rows(monkeypatch):
    rng = np.random.default_rng(3)
    dist, q_pids, g_pids, excluded = random_case(rng, 37, 64, 4)
    expected = loop_ranks(dist, q_pids, g_pids, excluded)
    for elements in (64, 5 * 64, 64 * 64):  # 1, 5 and all rows per pass over the block
        monkeypatch.setattr(ranking, '_CPU_ELEMENTS', elements)
        num, ranks = fast(dist, q_pids, g_pids, excluded)
        assert np.array_equal(num, expected[0]) and np.array_equal(ranks, expected[1])


@pytest.mark.parametrize('pass_bins', [2 ** 22, 200, 40, 19])
def test_capped_bins_per_pass(monkeypatch, pass_bins):
    # 300 columns: 37 bins a row uncapped; 200 bins a pass: 4 rows of 37 (+ 5); 40: one row of 35;
    # 19: the 16-bin floor (more entries a bin to compare one by one)
    rng = np.random.default_rng(6)
    dist, q_pids, g_pids, excluded = random_case(rng, 23, 300, 6, levels=5000)
    expected = loop_ranks(dist, q_pids, g_pids, excluded)
    monkeypatch.setattr(ranking, '_PASS_BINS', pass_bins)
    bins, rows = ranking._binning(23, 300, torch.device('cpu'))
    assert (bins, rows) == {2 ** 22: (37, 23), 200: (37, 4), 40: (35, 1), 19: (16, 1)}[pass_bins]
    num, ranks = fast(dist.astype(np.float32), q_pids, g_pids, excluded)
    assert np.array_equal(num, expected[0]) and np.array_equal(ranks, expected[1])


def test_key_index_pairs_and_masks():
    index = KeyIndex(torch.tensor([5, 3, 5, 9, 3, 5]))
    rows, cols = index.pairs(torch.tensor([5, 7, 3]))
    assert rows.tolist() == [0, 0, 0, 2, 2] and cols.tolist() == [0, 2, 5, 1, 4]
    mask = pairs_to_mask((rows, cols), 3, 6)
    assert mask.sum() == 5 and mask[2].tolist() == [False, True, False, False, True, False]
    empty = KeyIndex(torch.zeros(0, dtype=torch.int64)).pairs(torch.tensor([1]))
    assert empty[0].numel() == 0


def test_collector_takes_pairs_or_masks():
    from utils.ranking import RankCollector
    rng = np.random.default_rng(4)
    dist, q_pids, g_pids, excluded = random_case(rng, 12, 40, 3)
    by_pairs = RankCollector(q_pids, g_pids,
                             lambda s, e: tuple(map(torch.as_tensor, np.nonzero(excluded[s:e]))))
    by_mask = RankCollector(q_pids, g_pids, lambda s, e: torch.as_tensor(excluded[s:e]))
    for start in range(0, 12, 5):
        for collector in (by_pairs, by_mask):
            collector.add(start, min(start + 5, 12), torch.as_tensor(dist[start:start + 5]))
    expected = loop_ranks(dist, q_pids, g_pids, excluded)
    for stats in (by_pairs.stats(), by_mask.stats()):
        assert np.array_equal(stats.num_pos, expected[0]) and np.array_equal(stats.ranks, expected[1])


def negative_nan(shape):
    """NaN with the sign bit set, as x86 makes for inf - inf or F.normalize of an inf feature."""
    inf = torch.full(shape, float('inf'))
    value = inf - inf
    assert int(value.view(torch.int32).flatten()[0]) < 0
    return value


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float16, torch.float32, torch.float64])
def test_nan_ranks_last_whatever_its_sign(dtype, device):
    rng = np.random.default_rng(4)
    dist, q_pids, g_pids, excluded = random_case(rng, 20, 80, 5)
    dist = torch.tensor(dist, dtype=torch.float32)
    nan_at = torch.tensor(rng.random(dist.shape) < 0.15)
    dist[nan_at] = negative_nan((int(nan_at.sum()),))
    dist[torch.tensor(rng.random(dist.shape) < 0.05)] = float('nan')
    dist = dist.to(dtype)
    num_ref, ranks_ref = loop_ranks(dist.double().numpy(), q_pids, g_pids, excluded)
    num, ranks = fast(dist, q_pids, g_pids, excluded, device)
    assert np.array_equal(num, num_ref) and np.array_equal(ranks, ranks_ref)
    num, ranks = sorted_match_ranks(dist.to(device), torch.tensor(q_pids, device=device),
                                    torch.tensor(g_pids, device=device),
                                    torch.tensor(excluded, device=device))
    assert np.array_equal(num.cpu().numpy(), num_ref) and np.array_equal(ranks.cpu().numpy(), ranks_ref)


def test_rows_longer_than_a_tile_of_the_fused_count():
    # the fused count bins a row a tile at a time: rows of several tiles, ties and NaN
    rng = np.random.default_rng(7)
    dist, q_pids, g_pids, excluded = random_case(rng, 3, 3 * ranking_cpu._TILE + 5, 40,
                                                 levels=2000)
    dist[rng.random(dist.shape) < 0.01] = np.nan
    dist[(g_pids[None] == q_pids[:, None]) & np.isnan(dist)] = 0.5  # finite matches
    num, ranks = fast(dist.astype(np.float32), q_pids, g_pids, excluded)
    num_ref, ranks_ref = loop_ranks(dist.astype(np.float32).astype(np.float64), q_pids, g_pids,
                                    excluded)
    assert np.array_equal(num, num_ref) and np.array_equal(ranks, ranks_ref)


def test_matches_a_few_ulps_apart_near_zero():
    # bins / span overflows float32 here: the map must stay monotone all the same
    tiny = np.float32(1.4e-45)  # the smallest subnormal
    dist = np.array([[0.0, tiny, 2 * tiny, -tiny, 1.0, tiny, 0.0, np.inf]], np.float32)
    q_pids, g_pids = np.array([1]), np.array([1, 1, 2, 2, 2, 1, 2, 2])
    excluded = np.zeros(dist.shape, bool)
    num, ranks = fast(dist, q_pids, g_pids, excluded)
    num_ref, ranks_ref = loop_ranks(dist.astype(np.float64), q_pids, g_pids, excluded)
    assert np.array_equal(num, num_ref) and np.array_equal(ranks, ranks_ref)
