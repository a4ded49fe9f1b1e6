"""VehicleID, animal and ATRW protocols on hand-worked cases."""
import json

import numpy as np
import pytest
import torch

from utils.errors import ReIDError
from utils.metrics import R1_mAP_eval
from utils.protocols import vehicleid_draw
from utils.reranking import re_ranking


def run(evaluator, feats, pids, cams=None, paths=None):
    evaluator.reset()
    feats = torch.tensor(feats, dtype=torch.float32).reshape(len(pids), -1)
    cams = np.zeros(len(pids), int) if cams is None else np.asarray(cams)
    item = (feats, torch.tensor(pids), torch.tensor(cams))
    evaluator.update(item + ((list(paths),) if paths is not None else ()))
    return evaluator.compute()


# ---------------------------------------------------------------- VehicleID
# 1-D features a0=0, b0=1, a1=2, b1=5 (indices 0..3; squared distances). Every draw picks one
# gallery image per identity (keys: sorted gallery indices); the other two are the queries:
#   gallery {a0,b0}: a1 -> b0 (1) a0 (4): AP .5 miss | b1 -> b0 (16) a0 (25): AP 1 hit  => mAP .75, R1 .5
#   gallery {a0,b1}: a1 -> a0 (4) b1 (9): AP 1 hit  | b0 -> a0 (1) b1 (16): AP .5 miss => mAP .75, R1 .5
#   gallery {a1,b0}: a0 -> b0 (1) a1 (4): AP .5 miss | b1 -> a1 (9) b0 (16): AP .5 miss => mAP .5,  R1 0
#   gallery {a1,b1}: a0 -> a1 (4) b1 (25): AP 1 hit | b0 -> a1 (1) b1 (16): AP .5 miss => mAP .75, R1 .5
VEHICLE_TABLE = {(0, 1): (0.75, 0.5), (0, 3): (0.75, 0.5), (1, 2): (0.5, 0.0), (2, 3): (0.75, 0.5)}


def test_vehicleid_averages_hand_worked_draws():
    feats, pids = [0.0, 1.0, 2.0, 5.0], np.array([0, 1, 0, 1])  # a0 b0 a1 b1
    ev = R1_mAP_eval(4, max_rank=2, feat_norm='no', protocol='vehicleid', vehicleid_trials=10)
    result = run(ev, feats, pids, cams=[0, 0, 0, 0])  # one camera: no filtering happens
    draws = [tuple(g) for g in result.extra['gallery_indices']]
    assert len(draws) == 10 and set(draws) <= set(VEHICLE_TABLE) and len(set(draws)) > 1
    assert result.extra['trial_mAP'] == [VEHICLE_TABLE[d][0] for d in draws]
    assert result.mAP == pytest.approx(np.mean([VEHICLE_TABLE[d][0] for d in draws]), abs=1e-12)
    assert result.cmc[0] == pytest.approx(np.mean([VEHICLE_TABLE[d][1] for d in draws]), abs=1e-6)
    assert result.cmc[1] == 1.0
    again = run(ev, feats, pids, cams=[0, 0, 0, 0])
    assert [tuple(g) for g in again.extra['gallery_indices']] == draws  # seeded


def test_vehicleid_draw_is_one_image_per_identity():
    pids = np.random.default_rng(0).integers(0, 30, 200)
    rng = np.random.default_rng(1)
    for _ in range(5):
        query, gallery = vehicleid_draw(pids, rng)
        assert sorted(pids[gallery]) == sorted(set(pids))
        assert sorted(np.concatenate([query, gallery])) == list(range(200))


# ------------------------------------------------------------------- animal
# Gallery = the four query images. Positions x0 = x1 = 0, x2 = 1, x3 = 3; ids B A A B.
# x1 has the same feature as x0, which comes first in the gallery, so for x1 the order is
# x0 (0, miss), x1 (0, itself), x2 (1, hit). Dropping x1 itself puts the hit at rank 2;
# upstream's "drop the nearest" would drop x0 and count x1 itself as a rank-1 hit.
# Trapezoid term of a hit = (precision before it + precision at it) / 2.
#   x0 (B): x1 miss, x2 miss, x3 hit -> rank 3: AP 1/3, trapezoid (0/2 + 1/3)/2 = 1/6
#   x1 (A): x0 miss, x2 hit -> rank 2: AP 1/2, trapezoid (0/1 + 1/2)/2 = 1/4
#   x2 (A): x0 (1, index before x1) miss, x1 (1) hit -> rank 2: AP 1/2, trapezoid 1/4
#   x3 (B): x2 (4) miss, x0 (9) hit -> rank 2: AP 1/2, trapezoid 1/4
ANIMAL_FEATS, ANIMAL_PIDS = [0.0, 0.0, 1.0, 3.0], np.array([1, 0, 0, 1])


@pytest.mark.parametrize('mode,expected', [('standard', (1 / 3 + 3 / 2) / 4), ('trapezoid', (1 / 6 + 3 / 4) / 4)])
def test_animal_drops_the_query_itself(mode, expected):
    paths = [f'x{i}.jpg' for i in range(4)]
    ev = R1_mAP_eval(4, feat_norm='no', protocol='animal', ap_mode=mode)
    # gallery given explicitly (same images, same paths) and as the query set itself
    both = run(ev, ANIMAL_FEATS * 2, np.tile(ANIMAL_PIDS, 2), paths=paths * 2)
    alone = run(ev, ANIMAL_FEATS, ANIMAL_PIDS, paths=paths)
    for result in (both, alone):
        assert result.mAP == pytest.approx(expected, abs=1e-12)
        assert result.cmc[:3].tolist() == [0.0, 0.75, 1.0]
        assert list(result.summary())[0] == f'mAP({mode})' and result.ap_mode == mode
        assert result.excluded_mask(1).tolist() == [False, True, False, False]


def test_animal_trapezoid_by_hand():
    # hits at ranks 1, 3, 6 of 6: ((1+1)/2 + (1/2 + 2/3)/2 + (2/5 + 3/6)/2) / 3 = 61/90
    feats = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    pids = np.array([7, 7, 3, 7, 3, 3, 7])
    result = run(R1_mAP_eval(1, feat_norm='no', protocol='animal', ap_mode='trapezoid'), feats, pids,
                 paths=[f'{i}.png' for i in range(7)])
    assert result.mAP == pytest.approx(61 / 90, abs=1e-12)


def test_animal_reranks_the_query_set_against_itself():
    rng = np.random.default_rng(6)
    pids = rng.permutation(np.repeat(np.arange(8), 4))
    feats = rng.standard_normal((8, 6))[pids] + 0.7 * rng.standard_normal((32, 6))
    ev = R1_mAP_eval(32, protocol='animal', ap_mode='standard', reranking=True, k1=5, k2=2)
    result = run(ev, feats, pids)
    unit = torch.nn.functional.normalize(torch.tensor(feats, dtype=torch.float32), dim=1)
    assert np.array_equal(result.distmat, re_ranking(unit, None, 5, 2, 0.3))
    aps = []
    for q in range(32):  # own image dropped by index, standard AP
        order = [j for j in np.argsort(result.distmat[q], kind='stable') if j != q]
        hits = np.flatnonzero(pids[order] == pids[q]) + 1
        aps.append(np.mean(np.arange(1, len(hits) + 1) / hits))
    assert result.mAP == pytest.approx(np.mean(aps), abs=1e-12)


@pytest.mark.parametrize('protocol', ['animal', 'vehicleid'])
def test_protocol_sweeps_equal_separate_runs(protocol):
    rng = np.random.default_rng(7)
    pids = rng.permutation(np.repeat(np.arange(8), 4))
    feats = rng.standard_normal((8, 6))[pids] + 0.7 * rng.standard_normal((32, 6))
    kw = dict(protocol=protocol, reranking=True, vehicleid_trials=3, max_rank=5)
    sweep = run(R1_mAP_eval(32, k1=[3, 5], k2=2, lambda_value=[0.2, 0.5], **kw), feats, pids)
    table = sweep.extra['rerank_sweep']
    assert len(table) == 4
    for row in table:
        one = run(R1_mAP_eval(32, k1=row['k1'], k2=row['k2'], lambda_value=row['lambda'], **kw),
                  feats, pids)
        assert {k: v for k, v in row.items() if k not in ('k1', 'k2', 'lambda')} == one.summary()
    assert sweep.summary() == dict(list(table[0].items())[3:])


def test_animal_needs_paths_when_the_gallery_is_separate():
    with pytest.raises(ReIDError, match='paths'):
        run(R1_mAP_eval(2, protocol='animal'), [[1.0], [2.0], [3.0]], np.array([0, 0, 1]))


# --------------------------------------------------------------------- ATRW
# imgid: entity, camera (frame[0], frame[1]), frame, kind, 1-D position
#   0: e1 (0,0) 10 sing  0.0 | 1: e1 (0,0) 12 sing 0.1 | 2: e1 (0,0) 15 sing 0.5
#   3: e2 (1,0)  5 multi 3.0 | 4: e2 (2,0)  5 multi 2.0 | 5: e-1 (0,0) 11 ''   0.2
#   6: e3 (1,0)  7 ''    2.5 | 7: e4 (3,0)  1 multi 10.0
# junk = same entity, same camera, |frame difference| <= 3, or entity -1.
#   q0: 1 (junk, 2 frames), 5 (junk, e-1), 2 (hit, 5 frames) -> AP 1, top-1
#   q1: 0, 5, 2 all junk (2 and 3 frames) -> no valid match: AP 0, miss
#   q2: 5 (junk), 1 (junk, 3 frames), 0 (hit, 5 frames) -> AP 1, top-1
#   q3: 6 (e3 miss), 4 (hit, other camera) -> rank 2: AP 1/2, top-5
#   q4: 6 (miss), 3 (hit) -> AP 1/2, top-5 | q7: no other e4 -> AP 0, miss
# single-camera: mAP 2/3, top-1 2/3, top-5 2/3; cross-camera: mAP 1/3, top-1 0, top-5 2/3
ATRW = [(1, (0, 0), 10, 'sing', 0.0), (1, (0, 0), 12, 'sing', 0.1), (1, (0, 0), 15, 'sing', 0.5),
        (2, (1, 0), 5, 'multi', 3.0), (2, (2, 0), 5, 'multi', 2.0), (-1, (0, 0), 11, '', 0.2),
        (3, (1, 0), 7, '', 2.5), (4, (3, 0), 1, 'multi', 10.0)]


def write_annotation(path, rows):
    json.dump([{'imgid': i, 'query': kind, 'entityid': eid, 'frame': [cam[0], cam[1], frame]}
               for i, (eid, cam, frame, kind, _) in enumerate(rows)], open(path, 'w'))
    return str(path)


def test_atrw_official_rules(tmp_path):
    anno = write_annotation(tmp_path / 'gt_test_plain.json', ATRW)
    paths = [f'/data/test/{i:06d}.jpg' for i in range(len(ATRW))]
    ev = R1_mAP_eval(len(ATRW), feat_norm='no', protocol='atrw', atrw_annotation=anno)
    result = run(ev, [r[4] for r in ATRW], np.zeros(len(ATRW), int), paths=paths)
    expected = {'mmAP': 0.5, 'mAP(single_cam)': 2 / 3, 'top-1(single_cam)': 2 / 3,
                'top-5(single_cam)': 2 / 3, 'mAP(cross_cam)': 1 / 3, 'top-1(cross_cam)': 0.0,
                'top-5(cross_cam)': 2 / 3}
    assert list(result.summary()) == list(expected)
    assert result.summary() == pytest.approx(expected, abs=1e-12)
    assert result.excluded_mask(0).tolist() == [True, True, False, False, False, True, False, False]
    # the same image given in query and gallery is scored once
    twice = run(R1_mAP_eval(len(ATRW), feat_norm='no', protocol='atrw', atrw_annotation=anno),
                [r[4] for r in ATRW] + [0.0], np.zeros(len(ATRW) + 1, int), paths=paths + paths[:1])
    assert twice.summary() == result.summary()


def test_atrw_sweep_rows_equal_separate_runs(tmp_path):
    anno = write_annotation(tmp_path / 'gt_test_plain.json', ATRW)
    paths = [f'/data/test/{i:06d}.jpg' for i in range(len(ATRW))]
    feats = [[r[4], (i % 3) / 3] for i, r in enumerate(ATRW)]
    kw = dict(feat_norm='no', protocol='atrw', atrw_annotation=anno, reranking=True)
    sweep = run(R1_mAP_eval(len(ATRW), k1=[2, 4], lambda_value=[0.3, 1.0], **kw), feats,
                np.zeros(len(ATRW), int), paths=paths)
    table = sweep.extra['rerank_sweep']
    for row in table:
        one = run(R1_mAP_eval(len(ATRW), k1=row['k1'], k2=row['k2'], lambda_value=row['lambda'], **kw),
                  feats, np.zeros(len(ATRW), int), paths=paths)
        assert {k: v for k, v in row.items() if k not in ('k1', 'k2', 'lambda')} == one.summary()
    # lambda = 1 is the initial distance: the plain ranking's scores
    plain = run(R1_mAP_eval(len(ATRW), feat_norm='no', protocol='atrw', atrw_annotation=anno), feats,
                np.zeros(len(ATRW), int), paths=paths)
    assert dict(list(table[1].items())[3:]) == plain.summary()


def test_atrw_matches_official_scoring_on_random_data(tmp_path):
    """Official procedure: rank every other image, mask junk, sklearn AP (equal to ours)."""
    from sklearn.metrics import average_precision_score
    rng = np.random.default_rng(5)
    n = 60
    rows = [(int(rng.integers(-1, 8)), (int(rng.integers(0, 2)), 0), int(rng.integers(0, 12)),
             str(rng.choice(['sing', 'multi'])), 0.0) for _ in range(n)]
    feats = rng.standard_normal((n, 4))
    anno = write_annotation(tmp_path / 'a.json', rows)
    result = run(R1_mAP_eval(n, feat_norm='no', protocol='atrw', atrw_annotation=anno), feats,
                 np.zeros(n, int), paths=[f'{i}.jpg' for i in range(n)])
    aps = {'sing': [], 'multi': []}
    for q in range(n):
        order = [j for j in np.argsort(result.distmat[q], kind='stable') if j != q]
        eid, cam, frame = rows[q][0], rows[q][1], rows[q][2]
        junk = np.array([rows[j][0] == -1 or (rows[j][0] == eid and rows[j][1] == cam
                                              and abs(rows[j][2] - frame) <= 3) for j in order])
        match = np.array([rows[j][0] == eid for j in order]) & ~junk
        scores = np.where(junk, 0.0, 1.0 / (np.arange(len(order)) + 1))
        aps[rows[q][3]].append(average_precision_score(match, scores) if match.any() else 0.0)
    assert result.summary()['mAP(single_cam)'] == pytest.approx(np.mean(aps['sing']), abs=1e-12)
    assert result.summary()['mAP(cross_cam)'] == pytest.approx(np.mean(aps['multi']), abs=1e-12)


def _animal_code_atrw(feats, rows, k1, k2, lam):
    """The animal code's test_rerank_clipreid.py, step by step: the test list is both query
    and gallery of re_ranking, each query's ranking drops its first entry, and the official
    plain-track scoring (junk rule, sklearn AP) scores the rest."""
    from sklearn.metrics import average_precision_score
    dist = re_ranking(feats, feats, k1, k2, lam, dist='cosine_sq')
    aps = {'sing': [], 'multi': []}
    for q, (eid, cam, frame, kind, _) in enumerate(rows):
        ans = np.argsort(dist[q], kind='stable')[1:]  # ties: first index, as ours
        junk = np.array([rows[j][0] == -1 or (rows[j][0] == eid and rows[j][1] == cam
                                              and abs(rows[j][2] - frame) <= 3) for j in ans])
        match = np.array([rows[j][0] == eid for j in ans]) & ~junk
        distances = np.where(junk, np.inf, np.arange(len(ans)) + 1.0)
        aps[kind].append(average_precision_score(match, 1 / distances) if match.any() else 0.0)
    return np.mean(aps['sing']), np.mean(aps['multi'])


def test_atrw_animal_code_mode_reproduces_the_animal_code(tmp_path):
    rng = np.random.default_rng(7)
    n = 40
    rows = [(int(rng.integers(-1, 6)), (int(rng.integers(0, 2)), 0), int(rng.integers(0, 12)),
             str(rng.choice(['sing', 'multi'])), 0.0) for _ in range(n)]
    feats = torch.nn.functional.normalize(torch.randn(n, 6, generator=torch.Generator()
                                                      .manual_seed(7)), dim=1)
    # image 5 is a copy of image 2 showing another tiger: its top-ranked entry is image 2
    # (first on ties), which the animal code drops instead of image 5 itself
    feats[5] = feats[2]
    rows[2], rows[5], rows[9] = (0, (0, 0), 1, 'sing', 0.0), (1, (1, 0), 1, 'multi', 0.0), \
        (1, (0, 0), 1, 'multi', 0.0)
    anno = write_annotation(tmp_path / 'a.json', rows)
    paths = [f'{i}.jpg' for i in range(n)]

    def evaluate(mode, k1=6, lam=0.3):  # the loader gives the test list twice: query, gallery
        ev = R1_mAP_eval(n, protocol='atrw', atrw_annotation=anno, atrw_mode=mode,
                         reranking=True, k1=k1, k2=3, lambda_value=lam, rerank_dist='cosine_sq')
        return run(ev, torch.cat([feats, feats]).numpy(), np.zeros(2 * n, int), paths=paths + paths)

    full = evaluate('animal_code')
    result = full.summary()
    sing, multi = _animal_code_atrw(feats, rows, 6, 3, 0.3)
    assert result['mAP(single_cam)'] == pytest.approx(sing, abs=1e-6)
    assert result['mAP(cross_cam)'] == pytest.approx(multi, abs=1e-6)
    assert full.excluded_mask(5)[2]  # the visualiser greys the dropped top-ranked entry
    # a sweep drops each setting's own top-ranked entry: its rows equal the animal code's runs
    table = evaluate('animal_code', k1=[6, 4], lam=[0.3, 0.0]).extra['rerank_sweep']
    for row in table:
        sing, multi = _animal_code_atrw(feats, rows, row['k1'], 3, row['lambda'])
        assert row['mAP(single_cam)'] == pytest.approx(sing, abs=1e-6)
        assert row['mAP(cross_cam)'] == pytest.approx(multi, abs=1e-6)
    # every image entering the k-reciprocal sets twice changes the numbers
    assert evaluate('dedup').summary()['mmAP'] != pytest.approx(result['mmAP'], abs=1e-4)


def test_atrw_animal_code_mode_without_reranking_equals_the_official_rule(tmp_path):
    """Plain distances: the top-ranked entry is the query's own copy, which the official
    rule drops anyway, so both modes agree (hand-worked fixture above)."""
    anno = write_annotation(tmp_path / 'gt_test_plain.json', ATRW)
    paths = [f'/data/test/{i:06d}.jpg' for i in range(len(ATRW))]
    feats = [r[4] for r in ATRW]
    results = [run(R1_mAP_eval(len(ATRW), feat_norm='no', protocol='atrw',
                               atrw_annotation=anno, atrw_mode=mode), feats + feats,
                   np.zeros(2 * len(ATRW), int), paths=paths + paths).summary()
               for mode in ('dedup', 'animal_code')]
    assert results[0] == results[1] and results[0]['mmAP'] == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ReIDError, match='TEST.ATRW_MODE'):
        R1_mAP_eval(2, protocol='atrw', atrw_annotation=anno, atrw_mode='twice')


def test_atrw_bad_inputs(tmp_path):
    anno = write_annotation(tmp_path / 'a.json', ATRW)
    ev = R1_mAP_eval(2, protocol='atrw', atrw_annotation=anno)
    with pytest.raises(ReIDError, match='not in TEST.ATRW_ANNOTATION'):
        run(ev, [[1.0], [2.0]], np.zeros(2, int), paths=['000001.jpg', '000099.jpg'])
    with pytest.raises(ReIDError, match='imgid'):
        run(ev, [[1.0], [2.0]], np.zeros(2, int), paths=['000001.jpg', 'tiger.jpg'])
    (tmp_path / 'bad.json').write_text('{"imgid": 1}')
    with pytest.raises(ReIDError, match='bad.json'):
        R1_mAP_eval(2, protocol='atrw', atrw_annotation=str(tmp_path / 'bad.json'))


@pytest.mark.parametrize('device', ['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
@pytest.mark.parametrize('protocol', ['standard', 'animal', 'atrw'])
def test_protocols_score_their_own_distances_on_any_device(tmp_path, protocol, device):
    """The ignored pairs are built on the features' device (the GPU's, there); the scores are
    those of the same distances ranked again on the CPU."""
    from utils.atrw import _scores
    from utils.distance import matrix_chunks
    from utils.protocols import scores
    from utils.ranking import RankCollector
    anno = write_annotation(tmp_path / 'a.json', ATRW)
    rng = np.random.default_rng(8)
    n = len(ATRW)
    feats = torch.tensor(rng.standard_normal((n, 5)), dtype=torch.float32)
    pids, cams = np.array([r[0] for r in ATRW]), rng.integers(0, 2, n)
    ev = R1_mAP_eval(4 if protocol == 'standard' else n, protocol=protocol, ap_mode='standard',
                     atrw_annotation=anno)
    paths = [f'{i:06d}.jpg' for i in range(n)]
    ev.update((feats.to(device), torch.tensor(pids), torch.tensor(cams), paths))
    result = ev.compute()
    collector = RankCollector(result.q_pids, result.g_pids, result.excluded)
    for start, end, dist in matrix_chunks(result.distmat, 3):
        collector.add(start, end, dist)
    if protocol == 'atrw':
        kinds = result.extra['query_kind']
        assert _scores(collector.stats(), kinds, result.cmc.size)[1] == result.summary()
    else:
        cmc, mAP = scores(collector.stats(), result.cmc.size)
        assert result.mAP == mAP and np.array_equal(result.cmc, cmc)
