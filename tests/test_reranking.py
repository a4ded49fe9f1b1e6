"""Re-ranking against a dense reference written from the paper / upstream description."""
import numpy as np
import pytest
import torch

from _rerank_reference import reference_re_ranking
from utils.metrics import eval_func
from utils.neighbours import NeighbourLists, StackedFeatures
from utils.reranking import KReciprocal, re_ranking, re_ranking_chunks, re_ranking_sweep

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def clustered(rng, n_ids, per_id, dim, spread=0.6):
    centres = rng.standard_normal((n_ids, dim))
    pids = np.repeat(np.arange(n_ids), per_id)
    feats = centres[pids] + spread * rng.standard_normal((len(pids), dim))
    return feats.astype(np.float32), pids


@pytest.fixture(scope='module')
def split():
    rng = np.random.default_rng(0)
    feats, pids = clustered(rng, 30, 8, 16)
    order = rng.permutation(len(pids))
    feats, pids = feats[order], pids[order]
    cams = rng.integers(0, 4, len(pids))
    return feats[:60], feats[60:], pids[:60], pids[60:], cams[:60], cams[60:]


@pytest.mark.parametrize('k1,k2,lam,transform', [(20, 6, 0.3, 'euclidean'), (12, 1, 0.5, 'euclidean'),
                                                 (9, 3, 0.3, 'cosine_sq')])
def test_matches_reference(split, k1, k2, lam, transform):
    qf, gf, qp, gp, qc, gc = split
    ours = re_ranking(torch.from_numpy(qf), torch.from_numpy(gf), k1, k2, lam, dist=transform)
    ref = reference_re_ranking(qf, gf, k1, k2, lam, transform)
    assert ours.shape == ref.shape == (60, 180)
    assert np.abs(ours - ref).max() < 1e-3
    assert np.quantile(np.abs(ours - ref), 0.99) < 1e-5  # the float16 steps are upstream's own
    cmc, mAP = eval_func(ours, qp, gp, qc, gc)
    cmc_ref, mAP_ref = eval_func(ref.astype(np.float32), qp, gp, qc, gc)
    assert abs(mAP - mAP_ref) < 1e-3 and np.abs(cmc - cmc_ref).max() < 1e-3
    plain = eval_func(((qf[:, None] - gf[None]) ** 2).sum(2), qp, gp, qc, gc)[1]
    assert mAP != pytest.approx(plain, abs=1e-3)  # re-ranking did change the ranking


def test_self_gallery_matches_reference(split):
    qf = split[0]
    ours = re_ranking(qf, None, 10, 4, 0.3)
    assert np.abs(ours - reference_re_ranking(qf, None, 10, 4, 0.3)).max() < 1e-3


def test_chunks_equal_whole_exactly():
    rng = np.random.default_rng(1)
    feats, _ = clustered(rng, 40, 6, 12)
    qf, gf = torch.from_numpy(feats[:70]), torch.from_numpy(feats[70:])
    whole = torch.cat([c for _, _, c in re_ranking_chunks(qf, gf, 15, 5, 0.3, rows=1024, block=8)])
    for rows in (8, 24):
        parts = list(re_ranking_chunks(qf, gf, 15, 5, 0.3, rows=rows, block=8))
        assert [p[0] for p in parts] == list(range(0, 70, rows))
        assert torch.equal(torch.cat([p[2] for p in parts]), whole)


def test_pair_batches_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(2)
    feats, _ = clustered(rng, 20, 5, 8)
    expected = re_ranking(feats[:30], feats[30:], 10, 3, 0.3)
    monkeypatch.setattr('utils.reranking._PAIRS', 5)
    assert np.array_equal(re_ranking(feats[:30], feats[30:], 10, 3, 0.3), expected)


def encodings(q, g, k1, k2, block=None, stash=None):
    stacked = StackedFeatures(torch.as_tensor(q), None if g is None else torch.as_tensor(g), block=block)
    neighbours = NeighbourLists(stacked, k1 + 1, stash)
    return stacked, neighbours, KReciprocal(k1=k1, k2=k2, neighbours=neighbours)


def dense(kr):
    """V as a dense float16 numpy matrix."""
    crow, col, val = kr.crow.cpu(), kr.col.cpu(), kr.val.cpu()
    rows = torch.repeat_interleave(torch.arange(kr.n), crow[1:] - crow[:-1])
    v = np.zeros((kr.n, kr.n), np.float16)
    v[rows.numpy(), col.numpy()] = val.numpy()
    return v


def test_encoding_is_sparse_and_normalised(split):
    kr = KReciprocal(split[0], split[1], k1=20, k2=1)
    nnz = kr.crow[1:] - kr.crow[:-1]
    assert int(nnz.min()) >= 1 and int(nnz.max()) < kr.n // 2
    sums = torch.zeros(kr.n).index_add_(0, torch.repeat_interleave(torch.arange(kr.n), nnz), kr.val)
    assert torch.allclose(sums, torch.ones(kr.n), atol=5e-3)  # float16 rounding of each weight
    assert torch.equal(kr.val.half().float(), kr.val)


@pytest.mark.parametrize('block', [7, 16, 1000])
def test_neighbour_pass_is_the_stable_sort_of_one_symmetric_matrix(block):
    rng = np.random.default_rng(5)
    feats, _ = clustered(rng, 15, 6, 8)
    feats[7] = feats[3]  # exact duplicates: ties broken by index
    stash = torch.zeros(40, 50)
    stacked = StackedFeatures(feats[:40], feats[40:], block=block)
    neighbours = NeighbourLists(stacked, 12, stash)
    whole = np.zeros((90, 90), np.float32)  # the pass's matrix, assembled from its blocks
    for bi in range(stacked.num_blocks):
        for bj in range(bi, stacked.num_blocks):
            (i0, i1), (j0, j1) = stacked.span(bi), stacked.span(bj)
            d = stacked.distance_block(bi, bj).numpy()
            whole[j0:j1, i0:i1] = d.T  # the lower triangle mirrors the upper one...
            whole[i0:i1, j0:j1] = d  # ...except inside diagonal blocks, computed whole
    assert np.array_equal(neighbours.index.numpy(), np.argsort(whole, axis=1, kind='stable')[:, :12])
    assert np.array_equal(neighbours.rowmax.numpy(), whole.max(1))
    assert np.array_equal(stash.numpy(), whole[:40, 40:])
    ref = ((feats[:, None].astype(np.float64) - feats[None]) ** 2).sum(2)
    assert np.abs(whole - ref).max() < 1e-4


def upstream_float16_steps(v, rank, k2, num_query, gal_start, original, lam):
    """Upstream's query expansion, Jaccard loop and final sum, in numpy float16, on our V."""
    if k2 != 1:
        v = np.stack([np.mean(v[rank[i, :k2], :], axis=0) for i in range(len(v))]).astype(np.float16)
    jaccard = np.zeros((num_query, len(v)), dtype=np.float16)
    for i in range(num_query):
        acc = np.zeros(len(v), dtype=np.float16)
        for k in np.where(v[i] != 0)[0]:
            rows = np.where(v[:, k] != 0)[0]
            acc[rows] = acc[rows] + np.minimum(v[i, k], v[rows, k])
        jaccard[i] = 1 - acc / (2 - acc)
    return (jaccard * (1 - lam))[:, gal_start:] + original * lam


@pytest.mark.parametrize('k2,lam', [(6, 0.3), (3, 0.55), (1, 0.3)])
def test_float16_steps_are_upstreams_bit_for_bit(split, k2, lam):
    qf, gf = split[0], split[1]
    stash = torch.zeros(60, 180)
    stacked, neighbours, kr = encodings(qf, gf, 20, k2, stash=stash)
    encoded = dense(KReciprocal(k1=20, k2=1, neighbours=neighbours))
    original = (stash / neighbours.rowmax[:60, None]).numpy()
    rank = neighbours.index.numpy()
    expected = upstream_float16_steps(encoded, rank, k2, 60, 60, original, lam)
    expanded = np.stack([np.mean(encoded[rank[i, :k2]], axis=0) for i in range(240)])
    assert np.array_equal(dense(kr), expanded.astype(np.float16))
    ours = np.concatenate([c.numpy() for _, _, c in re_ranking_chunks(qf, gf, 20, k2, lam, rows=13)])
    assert np.array_equal(ours, expected)


def test_self_gallery_float16_steps_are_upstreams(split):
    qf = split[0]
    stash = torch.zeros(60, 60)
    stacked, neighbours, kr = encodings(qf, None, 10, 4, block=16, stash=stash)
    encoded = dense(KReciprocal(k1=10, k2=1, neighbours=neighbours))
    original = (stash / neighbours.rowmax[:, None]).numpy()
    expected = upstream_float16_steps(encoded, neighbours.index.numpy(), 4, 60, 0, original, 0.3)
    ours = [c.numpy() for _, _, c in re_ranking_chunks(qf, None, 10, 4, 0.3, block=16)]
    assert np.array_equal(np.concatenate(ours), expected)


def test_standalone_encoding_rows_and_jaccard(split):
    qf, gf = torch.from_numpy(split[0]), torch.from_numpy(split[1])
    kr = KReciprocal(qf, gf, 12, 3, 0.4)
    assert torch.equal(torch.cat([kr.rows(s, min(s + 25, 60)) for s in range(0, 60, 25)]),
                       torch.from_numpy(re_ranking(qf, gf, 12, 3, 0.4)))
    jaccard = KReciprocal(qf, gf, 12, 3, 0.0)  # no initial distances kept
    assert jaccard.neighbours.stash is None
    assert torch.equal(jaccard.jaccard_rows(0, 60), kr.jaccard_rows(0, 60))
    assert torch.equal(jaccard.rows(0, 60), kr.jaccard_rows(0, 60))
    with pytest.raises(ValueError, match='lambda'):
        next(jaccard.final(0, 5, [0.3]))


def test_sweep_equals_separate_runs(split):
    qf, gf = torch.from_numpy(split[0]), torch.from_numpy(split[1])
    k1s, k2s, lams = [8, 20], [1, 4], [0.2, 0.5, 0.9]
    out = np.zeros((60, 180), np.float32)
    swept = {}
    for setting, start, end, chunk in re_ranking_sweep(qf, gf, k1s, k2s, lams, rows=17, out=out):
        swept.setdefault(setting, []).append((start, chunk.clone()))
    assert sorted(swept) == list(range(12))
    for setting, (k1, k2, lam) in enumerate([(a, b, c) for a in k1s for b in k2s for c in lams]):
        whole = torch.cat([c for _, c in sorted(swept[setting], key=lambda x: x[0])]).numpy()
        assert np.array_equal(whole, re_ranking(qf, gf, k1, k2, lam)), (k1, k2, lam)
    assert np.array_equal(out, re_ranking(qf, gf, 8, 1, 0.2))


def test_bad_distance_is_refused(split):
    with pytest.raises(ValueError, match='cosine_sq'):
        re_ranking(split[0], split[1], dist='manhattan')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_matches_cpu(split):
    qf, gf = torch.from_numpy(split[0]), torch.from_numpy(split[1])
    cpu = re_ranking(qf, gf, 20, 6, 0.3)
    gpu = re_ranking(qf.cuda(), gf.cuda(), 20, 6, 0.3)
    assert np.abs(cpu - gpu).max() < 1e-3
    assert np.quantile(np.abs(cpu - gpu), 0.99) < 1e-5
    chunks = re_ranking_chunks(qf.cuda(), gf.cuda(), 20, 6, 0.3, rows=7)
    assert np.array_equal(torch.cat([c for _, _, c in chunks]).cpu().numpy(), gpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_float16_steps_are_upstreams(split):
    qf, gf = torch.from_numpy(split[0]).cuda(), torch.from_numpy(split[1]).cuda()
    stash = torch.zeros(60, 180, device='cuda')
    stacked, neighbours, kr = encodings(qf, gf, 20, 6, stash=stash)
    encoded = dense(KReciprocal(k1=20, k2=1, neighbours=neighbours))
    original = (stash / neighbours.rowmax[:60, None]).cpu().numpy()
    expected = upstream_float16_steps(encoded, neighbours.index.cpu().numpy(), 6, 60, 60, original, 0.3)
    ours = torch.cat([c for _, _, c in re_ranking_chunks(qf, gf, 20, 6, 0.3, rows=13)]).cpu().numpy()
    assert np.array_equal(ours, expected)


def test_query_expansion_sums_in_float32_in_neighbour_order():
    # column 0 of the k2 = 4 nearest rows holds 1, 2^-24, 2^-24 and 2.5 * 2^-10. In float32,
    # 1 + 2^-24 rounds back to 1 (twice), so numpy's mean is (1 + 2.5 * 2^-10) / 4, exactly
    # halfway between two float16 numbers: it rounds to the even one, 0.2505. The exact mean
    # is a little larger and would round up to 0.2507.
    kr = object.__new__(KReciprocal)
    kr.n, kr.k2, kr.expansion_sources = 4, 4, torch.tensor([[0, 1, 2, 3]] * 4)
    column = np.array([1.0, 2.0 ** -24, 2.0 ** -24, 2.5 * 2.0 ** -10], np.float16)
    kr._query_expansion(torch.arange(4), torch.zeros(4, dtype=torch.int64),
                        torch.from_numpy(column.astype(np.float32)))
    assert kr.val.tolist() == [float(np.float16(0.2505))] * 4
    assert kr.val[0] == float(np.mean(column[:, None], axis=0)[0])


@pytest.mark.parametrize('k1,k2', [(4, 6), (1, 1), (1, 5), (2, 9), (3, 20), (7, 8), (20, 6), (5, 40)])
def test_any_k1_k2_matches_reference(split, k1, k2):
    # k2 > k1 + 1: query expansion reads further down the ranking than the reciprocal sets
    qf, gf = split[0][:40], split[1][:80]
    ours = re_ranking(qf, gf, k1, k2, 0.3)
    assert np.abs(ours - reference_re_ranking(qf, gf, k1, k2, 0.3)).max() < 1e-3


@pytest.mark.parametrize('k1,k2', [(30, 6), (30, 25), (8, 40)])
def test_k_beyond_the_set_matches_reference(k1, k2):
    rng = np.random.default_rng(7)
    feats, _ = clustered(rng, 4, 4, 8)  # 6 queries, 10 gallery images: k1 >= G, k2 > Q + G
    ours = re_ranking(feats[:6], feats[6:], k1, k2, 0.3)
    assert np.abs(ours - reference_re_ranking(feats[:6], feats[6:], k1, k2, 0.3)).max() < 1e-3


def test_sweep_with_k2_beyond_small_k1(split):
    qf, gf = torch.from_numpy(split[0][:40]), torch.from_numpy(split[1][:80])
    swept = {s: c for s, _, _, c in re_ranking_sweep(qf, gf, [3, 20], 6, 0.3, rows=64)}
    for setting, k1 in enumerate([3, 20]):
        ref = reference_re_ranking(qf.numpy(), gf.numpy(), k1, 6, 0.3)
        assert np.abs(swept[setting].numpy() - ref).max() < 1e-3, k1


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_features_are_refused(split, bad):
    gf = split[1].copy()
    gf[5, 0] = bad
    with pytest.raises(ValueError, match='finite'):
        re_ranking(split[0], gf, 20, 6, 0.3)
