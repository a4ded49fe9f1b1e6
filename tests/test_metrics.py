"""Standard protocol (eval_func), the evaluator and its factory."""
import os
from itertools import product

import numpy as np
import pytest
import torch

from config import load_config
from utils.errors import ReIDError
from utils.metrics import R1_mAP_eval, eval_func, make_evaluator
from utils.protocols import format_sweep


def upstream_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The TransReID / CLIP-ReID per-query loop (stable argsort), as the oracle."""
    max_rank = min(max_rank, distmat.shape[1])
    indices = np.argsort(distmat, axis=1, kind='stable')
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap = [], []
    for i in range(len(q_pids)):
        order = indices[i]
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        hits = matches[i][keep]
        if not hits.any():
            continue
        cmc = hits.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = hits.cumsum() / np.arange(1, len(hits) + 1) * hits
        all_ap.append(precision.sum() / hits.sum())
    return np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_cmc), np.mean(all_ap)


def test_hand_worked_junk_and_skipped_query():
    # gallery:   g0 pid1 cam0 | g1 pid1 cam1 | g2 pid2 cam0 | g3 pid3 cam1 | g4 pid2 cam1
    # q0 (pid1 cam0): order g0 .1 (junk: same pid+cam), g3 .2, g2 .3, g1 .5 hit, g4 .9
    #                 -> first hit at rank 3, AP = 1/3
    # q1 (pid2 cam1): order g4 .1 (junk), g2 .2 hit, g1, g0, g3 -> rank 1, AP = 1
    # q2 (pid9): no match anywhere -> skipped
    dist = np.array([[0.1, 0.5, 0.3, 0.2, 0.9],
                     [0.4, 0.3, 0.2, 0.6, 0.1],
                     [0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    q_pids, q_cams = np.array([1, 2, 9]), np.array([0, 1, 0])
    g_pids, g_cams = np.array([1, 1, 2, 3, 2]), np.array([0, 1, 0, 1, 1])
    cmc, mAP = eval_func(dist, q_pids, g_pids, q_cams, g_cams)
    assert mAP == pytest.approx((1 / 3 + 1) / 2, abs=1e-12)
    assert cmc.dtype == np.float32 and cmc.tolist() == [0.5, 0.5, 1, 1, 1]  # max_rank -> G = 5


def test_hand_worked_average_precision():
    # hits at ranks 1, 3, 6: AP = (1/1 + 2/3 + 3/6) / 3 = 13/18
    dist = np.arange(1, 7, dtype=np.float32)[None] / 10
    cmc, mAP = eval_func(dist, np.array([7]), np.array([7, 3, 7, 3, 3, 7]), np.array([0]), np.ones(6, int))
    assert mAP == pytest.approx(13 / 18, abs=1e-12)
    assert cmc.tolist() == [1.0] * 6


def test_ties_are_ordered_by_gallery_index():
    # three equal distances: g0 (miss) comes first, then g1 and g2 (hits at ranks 2 and 3)
    cmc, mAP = eval_func(np.full((1, 3), 0.5), np.array([1]), np.array([2, 1, 1]),
                         np.array([0]), np.array([1, 1, 1]))
    assert mAP == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-12) and cmc.tolist() == [0, 1, 1]
    # 0.0 and -0.0 are equal distances too: the miss at index 0 stays first
    cmc, mAP = eval_func(np.array([[0.0, -0.0]], np.float32), np.array([1]), np.array([2, 1]),
                         np.array([0]), np.array([1, 1]))
    assert mAP == 0.5 and cmc.tolist() == [0, 1]


def test_no_valid_query_is_an_error():
    with pytest.raises(ReIDError, match='no query has a valid match'):
        eval_func(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), np.array([0]), np.array([0, 0]))


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_matches_upstream_loop_on_random_cases(dtype):
    rng = np.random.default_rng(3)
    for trial in range(5):
        q, g = rng.integers(5, 40), rng.integers(20, 300)
        dist = rng.random((q, g)).astype(dtype)
        dist[:, ::7] = dist[:, :1]  # plenty of ties
        q_pids, g_pids = rng.integers(0, 15, q), rng.integers(0, 15, g)
        q_cams, g_cams = rng.integers(0, 3, q), rng.integers(0, 3, g)
        cmc, mAP = eval_func(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
        cmc_ref, mAP_ref = upstream_eval(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
        assert np.array_equal(cmc, cmc_ref)
        assert mAP == pytest.approx(mAP_ref, abs=1e-12)


def test_chunks_and_tensor_input_agree_exactly():
    rng = np.random.default_rng(4)
    dist = rng.random((57, 400)).astype(np.float32)
    args = (rng.integers(0, 20, 57), rng.integers(0, 20, 400), rng.integers(0, 4, 57), rng.integers(0, 4, 400))
    whole = eval_func(dist, *args)
    for rows in (1, 8, 56):
        cmc, mAP = eval_func(dist, *args, chunk_rows=rows)
        assert mAP == whole[1] and np.array_equal(cmc, whole[0])
    for device in ['cpu'] + (['cuda'] if torch.cuda.is_available() else []):
        cmc, mAP = eval_func(torch.from_numpy(dist).to(device), *[torch.from_numpy(a) for a in args],
                             chunk_rows=13)
        assert mAP == whole[1] and np.array_equal(cmc, whole[0])
    half = dist.astype(np.float16)  # many ties; widened exactly
    cmc, mAP = eval_func(half, *args)
    cmc_ref, mAP_ref = upstream_eval(half.astype(np.float64), *args)
    assert np.array_equal(cmc, cmc_ref) and mAP == pytest.approx(mAP_ref, abs=1e-12)


def features(seed=0, n_ids=12, per_id=5, dim=16):
    rng = np.random.default_rng(seed)
    pids = rng.permutation(np.repeat(np.arange(n_ids), per_id))
    feats = rng.standard_normal((n_ids, dim))[pids] + 0.8 * rng.standard_normal((len(pids), dim))
    cams = rng.integers(0, 3, len(pids))
    return torch.tensor(feats, dtype=torch.float32), pids, cams


def run(evaluator, feats, pids, cams, paths=None, batch=7):
    evaluator.reset()
    for s in range(0, len(pids), batch):
        item = (feats[s:s + batch], torch.tensor(pids[s:s + batch]), torch.tensor(cams[s:s + batch]))
        evaluator.update(item + ((paths[s:s + batch],) if paths else ()))
    return evaluator.compute()


def test_evaluator_standard_protocol():
    feats, pids, cams = features()
    result = run(R1_mAP_eval(20, max_rank=10), feats, pids, cams)
    unit = torch.nn.functional.normalize(feats, dim=1)
    expected = ((unit[:20, None] - unit[None, 20:]) ** 2).sum(2).numpy()
    assert np.allclose(result.distmat, expected, atol=1e-5)
    cmc, mAP = eval_func(result.distmat, pids[:20], pids[20:], cams[:20], cams[20:], 10)
    assert result.mAP == mAP and np.array_equal(result.cmc, cmc)
    assert list(result.summary()) == ['mAP', 'Rank-1', 'Rank-5', 'Rank-10']
    assert result.summary()['Rank-5'] == cmc[4]
    cosine = run(R1_mAP_eval(20, max_rank=10, distance='cosine'), feats, pids, cams)
    assert cosine.mAP == pytest.approx(mAP, abs=1e-6)
    raw = run(R1_mAP_eval(20, feat_norm='no'), feats, pids, cams)
    expected = ((feats[:20, None] - feats[None, 20:]) ** 2).sum(2).numpy()
    assert np.allclose(raw.distmat, expected, rtol=1e-5, atol=1e-4)


def test_evaluator_reranking_changes_the_ranking():
    feats, pids, cams = features(1)
    plain = run(R1_mAP_eval(20), feats, pids, cams)
    rr = run(R1_mAP_eval(20, reranking=True, k1=6, k2=3), feats, pids, cams)
    assert rr.distmat.shape == plain.distmat.shape and not np.allclose(rr.distmat, plain.distmat)
    assert rr.mAP == eval_func(rr.distmat, pids[:20], pids[20:], cams[:20], cams[20:])[1]


def test_reranking_sweep_table_equals_separate_runs():
    feats, pids, cams = features(4)
    grid = dict(k1=[4, 7], k2=[1, 3], lambda_value=[0.3, 0.8])
    sweep = run(R1_mAP_eval(20, max_rank=10, reranking=True, **grid), feats, pids, cams)
    table = sweep.extra['rerank_sweep']
    assert [(r['k1'], r['k2'], r['lambda']) for r in table] == list(product(*grid.values()))
    for row in table:
        one = run(R1_mAP_eval(20, max_rank=10, reranking=True, k1=row['k1'], k2=row['k2'],
                              lambda_value=row['lambda']), feats, pids, cams)
        assert 'rerank_sweep' not in one.extra
        assert {k: v for k, v in row.items() if k not in ('k1', 'k2', 'lambda')} == one.summary()
        if row is table[0]:  # the first setting is the result
            assert sweep.summary() == one.summary() and np.array_equal(sweep.distmat, one.distmat)
    assert len(set(r['mAP'] for r in table)) > 1  # the settings do differ
    lines = format_sweep(table)
    assert len(lines) == 9 and lines[1].split()[:3] == ['4', '1', '0.300']
    assert lines[1].endswith(f'  {100 * table[0]["Rank-10"]:6.1f}%')
    assert len(set(len(line) for line in lines)) == 1  # aligned columns


def test_make_evaluator_reads_the_config(tmp_path):
    feats, pids, cams = features(3)
    paths = [str(tmp_path / f'{i:04d}.jpg') for i in range(len(pids))]
    cfg = load_config('', ['OUTPUT_DIR', str(tmp_path), 'TEST.DIST_MAT', 'dist', 'TEST.VISUALIZE', '2',
                           'TEST.MAX_RANK', '10'])
    ev = make_evaluator(cfg, 20, 'standard')
    assert ev.protocol == 'standard' and ev.max_rank == 10 and ev.spec.rerank is None
    result = run(ev, feats, pids, cams, paths)
    assert np.array_equal(np.load(tmp_path / 'dist.npy'), result.distmat)
    assert len(os.listdir(tmp_path / 'rank_lists')) == 2 and (tmp_path / 'cmc.png').exists()
    assert make_evaluator(cfg, 20, 'animal').protocol == 'animal'
    cfg = load_config('', ['TEST.PROTOCOL', 'standard', 'TEST.RE_RANKING', 'True',
                           'TEST.RE_RANKING_K1', '7', 'TEST.RE_RANKING_DIST', 'cosine_sq'])
    ev = make_evaluator(cfg, 20, 'animal')
    assert ev.protocol == 'standard'
    assert ev.spec.rerank == dict(k1=7, k2=6, lambda_value=0.3, dist='cosine_sq')
    cfg = load_config('', ['TEST.RE_RANKING', 'True', 'TEST.RE_RANKING_K1', '[7, 9]',
                           'TEST.RE_RANKING_LAMBDA', '[0.1, 0.2]'])
    ev = make_evaluator(cfg, 20, 'standard')
    assert ev.spec.rerank['k1'] == [7, 9] and len(ev.spec.settings()) == 4
    cfg = load_config('', ['TEST.RE_RANKING', 'True', 'TEST.RE_RANKING_K2', '[3, 0]'])
    with pytest.raises(ReIDError, match='TEST.RE_RANKING_K2 must be at least 1'):
        make_evaluator(cfg, 20, 'standard')


@pytest.mark.parametrize('key,value', [('TEST.DISTANCE', 'manhattan'), ('TEST.FEAT_NORM', 'maybe'),
                                       ('TEST.PROTOCOL', 'market'), ('TEST.AP_MODE', '11point')])
def test_bad_settings_name_the_key(key, value):
    cfg = load_config('', [key, value])
    with pytest.raises(ReIDError, match=key.replace('.', r'\.')):
        make_evaluator(cfg, 10, 'standard')


def test_atrw_without_annotation_fails_before_extraction():
    cfg = load_config('', ['TEST.PROTOCOL', 'atrw'])
    with pytest.raises(ReIDError, match='ATRW_ANNOTATION'):
        make_evaluator(cfg, 10, 'standard')


def test_a_nan_distance_never_ranks_first():
    # query 0's only match has distance NaN (sign bit set, as inf - inf gives on x86); the
    # wrong gallery image is at 0.5: Rank-1 is 0, as numpy's sort (NaN last) gives
    inf = torch.tensor([float('inf')])
    distmat = torch.tensor([[0.5, 0.0]])
    distmat[0, 1] = (inf - inf)[0]
    cmc, mAP = eval_func(distmat, np.array([1]), np.array([0, 1]), np.array([0]), np.array([1, 1]))
    assert cmc.tolist() == [0.0, 1.0] and mAP == pytest.approx(0.5)
    ref_cmc, ref_map = upstream_eval(distmat.numpy(), np.array([1]), np.array([0, 1]),
                                     np.array([0]), np.array([1, 1]))
    assert np.array_equal(cmc, ref_cmc) and mAP == pytest.approx(ref_map)


def test_tiny_gallery_clips_the_cmc_and_counts_skipped_queries():
    feats, pids, cams = features(5)
    # 8 queries, a gallery of 5: the CMC stops at rank 5, as eval_func's does
    keep = np.r_[0:8, 20:25]
    result = run(R1_mAP_eval(8, max_rank=50), feats[keep], pids[keep], cams[keep])
    q, g = keep[:8], keep[8:]
    cmc, mAP = eval_func(result.distmat, pids[q], pids[g], cams[q], cams[g])
    assert len(result.cmc) == len(cmc) == 5 and np.array_equal(result.cmc, cmc)
    assert list(result.summary()) == ['mAP', 'Rank-1', 'Rank-5']
    matched = [(pids[g] == pids[i]) & ~((pids[g] == pids[i]) & (cams[g] == cams[i])) for i in q]
    assert result.skipped_queries == sum(not m.any() for m in matched) > 0
    animal = run(R1_mAP_eval(4, protocol='animal'), feats[:4], pids[:4], cams[:4])
    assert len(animal.cmc) == 4


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_features_stop_the_evaluation(bad):
    feats, pids, cams = features(6)
    feats[3, 2] = bad  # a query
    feats[30] = bad  # a gallery image
    paths = [f'img_{i}.jpg' for i in range(len(pids))]
    with pytest.raises(ReIDError) as err:
        run(R1_mAP_eval(20), feats, pids, cams, paths)
    message = str(err.value)
    assert '1 of 20 query' in message and f'1 of {len(pids) - 20} gallery' in message
    assert 'img_3.jpg' in message and 'img_30.jpg' in message


class Passthrough(torch.nn.Module):
    def forward(self, images, cam_label=None, view_label=None):
        return images


def test_the_log_says_how_many_queries_were_skipped():
    import logging
    from types import SimpleNamespace
    from processor.inference import do_inference
    from utils.logger import get_logger

    feats, pids, cams = features(5)
    keep = np.r_[0:8, 20:25]
    feats, pids, cams = feats[keep], pids[keep], cams[keep]
    loader = [(feats, torch.tensor(pids), torch.tensor(cams), torch.zeros(13), [''] * 13)]
    cfg = SimpleNamespace(MODEL=SimpleNamespace(SIE_CAMERA=False, SIE_VIEW=False))
    runtime = SimpleNamespace(device=torch.device('cpu'))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger, level = get_logger(), get_logger().level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        model = Passthrough()
        result = do_inference(cfg, model, loader, R1_mAP_eval(8), runtime)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert result.skipped_queries > 0
    lines = [r.getMessage() for r in records]
    assert f'{result.skipped_queries} of 8 queries have no valid match in the gallery: left out ' \
           'of the figures above' in lines


def test_a_distance_matrix_save_that_fails_leaves_no_debris(tmp_path, monkeypatch):
    from utils.metrics import save_distmat
    path = save_distmat(np.ones((2, 3), np.float32), str(tmp_path / 'dist'))
    before = open(path, 'rb').read()

    def broken_save(f, array):
        f.write(b'half a matrix')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(np, 'save', broken_save)
    with pytest.raises(ReIDError, match='no space left'):
        save_distmat(np.zeros((2, 3), np.float32), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['dist.npy']
    assert open(path, 'rb').read() == before


def test_huge_finite_features_are_not_called_non_finite():
    from utils.finite import nonfinite_rows
    feats = torch.ones(4, 3)
    feats[1] = 3e38  # finite, though its sum overflows
    feats[2, 1] = float('nan')
    feats[3, 0] = -float('inf')
    assert nonfinite_rows(feats).tolist() == [2, 3]
    assert nonfinite_rows(feats.half().float()).tolist() == [1, 2, 3]  # 3e38 -> inf in float16
    assert nonfinite_rows(torch.zeros(0, 3)).tolist() == []
