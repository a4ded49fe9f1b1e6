"""test_clipreid.py and test_rerank_clipreid.py on every dataset, with its own protocol.

Each case takes a real YAML from configs/, points it at generated data and a tiny random
CLIP (seed 0), and evaluates a checkpoint saved from a model built on another tiny CLIP
(seed 1). The scripts' numbers must equal a reference computed here from that seed-1
model's own features: standard protocol by utils.metrics.eval_func, the others by sorting
each row in plain numpy under the protocol's rules (own image dropped; ATRW junk from the
annotation file; VehicleID's seeded one-image-per-identity galleries).
"""
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import load_config
from _e2e_helpers import (build, config_path, demo_root, logged_results, run_script, small_opts,
                          tiny_clip)
from model import make_model
from processor import cli
from utils.checkpoint import save_weights
from utils.errors import ReIDError
from utils.metrics import eval_func
from utils.protocols import vehicleid_draw
from utils.reranking import re_ranking

LAYOUTS = ('market1501', 'msmt17', 'veri', 'vehicleid', 'animals', 'custom')


def animal(species, test_root, train, query, gallery, *extra):
    return ('DATASETS.ROOT_DIR', '{root}/animals', 'DATASETS.TEST_ROOT_DIR', test_root,
            'DATASETS.TRAIN_LIST', f'datalist/{train}', 'DATASETS.QUERY_LIST', f'datalist/{query}',
            'DATASETS.GALLERY_LIST', f'datalist/{gallery}', *extra)


# dataset -> (config file, protocol, overrides; '{root}' is the generated data's folder)
CASES = {
    'market1501': ('person/vit_clipreid.yml', 'standard', ()),
    'msmt17': ('msmt17/vit_clipreid.yml', 'standard', ()),
    'veri': ('veri/vit_clipreid_sie_olp.yml', 'standard', ()),  # SIE camera + stride 12
    'VehicleID': ('vehicleid/vit_clipreid.yml', 'vehicleid', ('TEST.VEHICLEID_TRIALS', '3')),
    'yak': ('yak/vit_clipreid.yml', 'animal',
            animal('yak', 'yak_test', 'yak_train.txt', 'yak_probe.txt', 'yak_gallery.txt')),
    'elephant': ('elephant/vit_clipreid.yml', 'animal',
                 animal('elephant', 'elephant_test', 'elephant_train.txt', 'elephant_probe.txt',
                        'elephant_gallery.txt')),
    'tiger': ('tiger/vit_clipreid.yml', 'atrw',
              animal('tiger', 'tiger_test', 'tiger_train.txt', 'tiger_test.txt', 'tiger_test.txt',
                     'TEST.ATRW_ANNOTATION', '{root}/animals/datalist/tiger_gt_test_plain.json')),
    'custom': ('person/vit_clipreid.yml', 'standard',
               ('DATASETS.NAMES', 'custom', 'DATASETS.ROOT_DIR', '{root}/custom',
                'DATASETS.TRAIN_LIST', 'train.txt', 'DATASETS.QUERY_LIST', 'query.txt',
                'DATASETS.GALLERY_LIST', 'gallery.txt')),
}
KEYS = {'standard': ['mAP', 'Rank-1', 'Rank-5', 'Rank-10'],
        'vehicleid': ['mAP', 'Rank-1', 'Rank-5', 'Rank-10'],
        'animal': ['mAP(trapezoid)', 'Rank-1', 'Rank-5', 'Rank-10'],
        'atrw': ['mmAP', 'mAP(single_cam)', 'top-1(single_cam)', 'top-5(single_cam)',
                 'mAP(cross_cam)', 'top-1(cross_cam)', 'top-5(cross_cam)']}
_CHECKPOINTS = {}


def case_opts(tmp_path_factory, name, *opts, clip_seed=0):
    root = demo_root(tmp_path_factory, LAYOUTS, ids=12)
    out = tmp_path_factory.mktemp(f'test_{name}')
    extra = [o.format(root=root) for o in CASES[name][2]]
    # make_dataloader also builds the PK train loader: 6 training identities fill 8 images
    batches = ['SOLVER.IMS_PER_BATCH', 8, 'SOLVER.STAGE2.IMS_PER_BATCH', 8]
    return small_opts(root, tiny_clip(tmp_path_factory, 'vit', clip_seed), out, *batches, *extra,
                      *opts)


def checkpoint(tmp_path_factory, name, method='clipreid', config=None):
    """(weights path, cfg, data, model) of a model on the seed-1 tiny CLIP, saved once."""
    key = (name, method, config)
    if key not in _CHECKPOINTS:
        opts = case_opts(tmp_path_factory, name, 'MODEL.METHOD', method, clip_seed=1)
        cfg = load_config(config_path(config or CASES[name][0]), opts)
        _, data, model = build(cfg, seed=1)
        path = f'{cfg.OUTPUT_DIR}/{method}.pth'
        save_weights(model, path)
        _CHECKPOINTS[key] = (path, cfg, data, model.eval())
    return _CHECKPOINTS[key]


@torch.no_grad()
def features(cfg, data, model):
    feats, pids, camids, paths = [], [], [], []
    for images, pid, camid, viewid, path in data.val_loader:
        cam = camid if cfg.MODEL.SIE_CAMERA else None
        view = viewid if cfg.MODEL.SIE_VIEW else None
        feats.append(model(images, cam_label=cam, view_label=view))
        pids.append(pid.numpy())
        camids.append(camid.numpy())
        paths += path
    return F.normalize(torch.cat(feats), dim=1), np.concatenate(pids), np.concatenate(camids), paths


def distances(cfg, qf, gf=None, rerank=False):
    if rerank:
        t = cfg.TEST
        return re_ranking(qf, gf, t.RE_RANKING_K1, t.RE_RANKING_K2, t.RE_RANKING_LAMBDA,
                          t.RE_RANKING_DIST)
    gf = qf if gf is None else gf
    return torch.cdist(qf, gf).pow(2).numpy()


def sorted_hits(dist, q_pids, g_pids, keep):
    """Per query, the 1-based ranks of its true matches among the kept gallery entries."""
    for row, pid, k in zip(dist, q_pids, keep):
        order = np.argsort(row[k], kind='stable')
        yield np.flatnonzero(g_pids[k][order] == pid) + 1.0


def ap(ranks, mode='standard'):
    hit = np.arange(1, len(ranks) + 1)
    precision = hit / ranks
    if mode == 'trapezoid':
        precision = (np.where(ranks > 1, (hit - 1) / np.maximum(ranks - 1, 1), 1.0) + precision) / 2
    return precision.mean() if len(ranks) else 0.0


def rank_summary(all_ranks, mode, map_name='mAP'):
    all_ranks = [r for r in all_ranks if len(r)]
    first = np.array([r[0] for r in all_ranks])
    return {map_name: np.mean([ap(r, mode) for r in all_ranks]),
            **{f'Rank-{k}': np.mean(first <= k) for k in (1, 5, 10)}}


def reference(cfg, protocol, feats, pids, camids, paths, num_query, rerank):
    q, g = slice(0, num_query), slice(num_query, None)
    if protocol == 'standard':
        cmc, mAP = eval_func(distances(cfg, feats[q], feats[g], rerank), pids[q], pids[g],
                             camids[q], camids[g])
        return {'mAP': mAP, 'Rank-1': cmc[0], 'Rank-5': cmc[4], 'Rank-10': cmc[9]}
    if protocol == 'animal':  # the query's own image is in the gallery: only it is dropped
        keep = np.array(paths[g])[None, :] != np.array(paths[q])[:, None]
        dist = distances(cfg, feats[q], feats[g], rerank)
        mode = cfg.TEST.AP_MODE
        return rank_summary(sorted_hits(dist, pids[q], pids[g], keep), mode, f'mAP({mode})')
    if protocol == 'vehicleid':
        rng, runs = np.random.default_rng(0), []
        for _ in range(cfg.TEST.VEHICLEID_TRIALS):
            qi, gi = vehicleid_draw(pids, rng)
            dist = distances(cfg, feats[qi], feats[gi], rerank)
            keep = np.ones(dist.shape, dtype=bool)
            runs.append(rank_summary(sorted_hits(dist, pids[qi], pids[gi], keep), 'standard'))
        return {k: np.mean([r[k] for r in runs]) for k in runs[0]}
    if cfg.TEST.ATRW_MODE == 'animal_code':  # the test list is the query and gallery list
        dist = distances(cfg, feats, feats, rerank)
        return atrw_reference(cfg, paths, dist, drop_top=True)
    return atrw_reference(cfg, paths, distances(cfg, feats, None, rerank))


def atrw_reference(cfg, paths, dist, drop_top=False):
    """Official junk rule; each query drops its own image, or (the animal code) its
    top-ranked entry."""
    with open(cfg.TEST.ATRW_ANNOTATION) as f:
        anno = {e['imgid']: e for e in json.load(f)}
    rows = [anno[int(p.rsplit('/', 1)[-1].split('.')[0])] for p in paths]
    eid = np.array([r['entityid'] for r in rows])
    cam = np.array([tuple(r['frame'][:2]) for r in rows]).tolist()
    frame = np.array([r['frame'][2] for r in rows])
    n = len(rows)
    junk = np.array([[eid[i] == eid[j] and cam[i] == cam[j] and abs(frame[i] - frame[j]) <= 3
                      for j in range(n)] for i in range(n)])
    dropped = np.argmin(dist, axis=1) if drop_top else np.arange(n)
    junk[np.arange(n), dropped] = True
    ranks = list(sorted_hits(dist, eid, eid, ~junk))
    out = {}
    for code, name in (('sing', 'single_cam'), ('multi', 'cross_cam')):
        mine = [r for r, row in zip(ranks, rows) if row['query'] == code]
        out[f'mAP({name})'] = np.mean([ap(r) for r in mine])
        for k in (1, 5):
            out[f'top-{k}({name})'] = np.mean([len(r) > 0 and r[0] <= k for r in mine])
    out['mmAP'] = (out['mAP(single_cam)'] + out['mAP(cross_cam)']) / 2
    return out


def run_test_main(monkeypatch, config, opts, rerank=False):
    script = 'test_rerank_clipreid.py' if rerank else 'test_clipreid.py'
    monkeypatch.setattr(sys, 'argv', [script, '--config_file', config_path(config), *opts])
    return cli.test_main('test', rerank=rerank)


@pytest.mark.parametrize('rerank', [False, True], ids=['test', 'rerank'])
@pytest.mark.parametrize('name', list(CASES))
def test_script_numbers_equal_the_reference(tmp_path_factory, monkeypatch, name, rerank):
    config, protocol, _ = CASES[name]
    weights, cfg, data, model = checkpoint(tmp_path_factory, name)
    result = run_test_main(monkeypatch, config,
                           case_opts(tmp_path_factory, name, 'TEST.WEIGHT', weights), rerank)
    assert result.protocol == protocol
    feats, pids, camids, paths = features(cfg, data, model)
    keys = KEYS[protocol]
    if protocol == 'vehicleid':  # a gallery of one image per identity: the CMC stops there
        keys = [k for k in keys if not k.startswith('Rank-') or int(k[5:]) <= len(set(pids))]
        assert len(keys) < len(KEYS[protocol])  # the generated split is that small
    assert list(result.summary()) == keys
    expected = reference(cfg, protocol, feats, pids, camids, paths, data.num_query, rerank)
    for key, value in result.summary().items():
        assert value == pytest.approx(expected[key], abs=1e-6), key


def test_rerank_script_in_a_subprocess(tmp_path_factory):
    """test_rerank_clipreid.py as a user runs it (yak: animal protocol, cosine_sq re-ranking)."""
    weights, cfg, data, model = checkpoint(tmp_path_factory, 'yak')
    log = run_script('test_rerank_clipreid.py', CASES['yak'][0],
                     case_opts(tmp_path_factory, 'yak', 'TEST.WEIGHT', weights))
    (logged,) = logged_results(log)
    assert ('Validation results (animal protocol, k-reciprocal re-ranking k1=20 k2=6 '
            'lambda=0.3 (cosine_sq initial distance)):') in log
    expected = reference(cfg, 'animal', *features(cfg, data, model), data.num_query, True)
    assert list(logged) == KEYS['animal']
    for key, value in logged.items():
        assert value == pytest.approx(expected[key], abs=6e-4), key


@pytest.mark.parametrize('method', ['clipreid', 'pcl', 'baseline'])
def test_method_is_read_from_the_checkpoint(tmp_path_factory, monkeypatch, method):
    config = 'pcl/market1501.yml'  # its MODEL.METHOD is overridden to '' below
    weights, cfg, data, model = checkpoint(tmp_path_factory, 'market1501', method, config)
    opts = case_opts(tmp_path_factory, 'market1501', 'TEST.WEIGHT', weights, 'MODEL.METHOD', '')
    result = run_test_main(monkeypatch, config, opts)
    expected = reference(cfg, 'standard', *features(cfg, data, model), data.num_query, False)
    assert result.mAP == pytest.approx(expected['mAP'], abs=1e-6)
    wrong = {'clipreid': 'pcl', 'pcl': 'baseline', 'baseline': 'pcl'}[method]
    opts = case_opts(tmp_path_factory, 'market1501', 'TEST.WEIGHT', weights, 'MODEL.METHOD', wrong)
    with pytest.raises(ReIDError, match='does not fit'):
        run_test_main(monkeypatch, config, opts)


def test_animal_configs_prompt_person_as_the_animal_code(tmp_path_factory):
    _, cfg, data, model = checkpoint(tmp_path_factory, 'yak')
    assert model.prompt_learner.text == 'A photo of a X X X X person.'
    opts = case_opts(tmp_path_factory, 'yak', 'MODEL.PROMPT_OBJECT', '')  # the documented switch
    species = make_model(load_config(config_path(CASES['yak'][0]), opts), data.num_classes,
                         data.camera_num, data.view_num, object_word=data.dataset.object_word)
    assert species.prompt_learner.text == 'A photo of a X X X X yak.'
