"""test_rerank_clipreid.py with a re-ranking sweep and DATASETS.VAL_IDENTITIES: the setting
is chosen on the validation split (processor/selection.py).

Generated market1501 data (6 training identities, 2 held out) and checkpoints of random tiny
CLIP-ReID models saved in-process: one with a classifier for the 4 identities that train
(as a run with the split writes), one for all 6 (a run without it). The validation mAP of
every setting is recomputed here from the model's own features (utils.reranking.re_ranking
and eval_func, one setting at a time), and its argmax, the first on ties, must be the choice.
"""
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _e2e_helpers import config_path, demo_root, small_opts, tiny_clip
from config import load_config
from datasets import make_dataloader
from model import make_model
from processor import cli
from processor.selection import best_row, check_trained_without
from utils.checkpoint import save_weights
from utils.errors import ReIDError
from utils.metrics import eval_func
from utils.reranking import re_ranking

CONFIG = 'person/vit_clipreid.yml'
HELD = 2  # DATASETS.VAL_IDENTITIES
K1, K2, LAMBDA = [2, 4, 8], [1, 2], [0.0, 0.3, 1.0]
SWEEP = ['TEST.RE_RANKING_K1', str(K1), 'TEST.RE_RANKING_K2', str(K2),
         'TEST.RE_RANKING_LAMBDA', str(LAMBDA)]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """{'root', 'clip', 'split' / 'all': (checkpoint path, model), 'data', 'cfg'}."""
    root = demo_root(tmp_path_factory, ('market1501',), ids=12)
    clip = tiny_clip(tmp_path_factory, 'vit', 0)
    out = tmp_path_factory.mktemp('selection')
    cfg = load_config(config_path(CONFIG), small_opts(root, clip, out,
                                                      'DATASETS.VAL_IDENTITIES', HELD))
    data = make_dataloader(cfg, training=False)
    assert data.dataset.num_train_pids == 4 and len(data.val_sets) == 1
    found = {'root': root, 'clip': clip, 'data': data, 'cfg': cfg}
    for name, identities in (('split', 4), ('all', 6), ('other', 5)):
        torch.manual_seed(1)
        model = make_model(cfg, identities, data.camera_num, data.view_num,
                           object_word=data.dataset.object_word).eval()
        path = str(out / f'{name}.pth')
        save_weights(model, path)
        found[name] = (path, model)
    return found


def run_test_script(tiny, monkeypatch, tmp_path, checkpoint='split', *opts):
    """(EvalResult, log text) of test_rerank_clipreid.py on a checkpoint of the fixture."""
    out = tmp_path / f'out{len(os.listdir(tmp_path))}'
    args = small_opts(tiny['root'], tiny['clip'], out, 'TEST.WEIGHT', tiny[checkpoint][0], *opts)
    monkeypatch.setattr(sys, 'argv', ['test_rerank_clipreid.py', '--config_file',
                                      config_path(CONFIG), *map(str, args)])
    result = cli.test_main('test', rerank=True)
    with open(out / 'test_rerank_log.txt') as f:
        return result, f.read()


@torch.no_grad()
def validation_maps(tiny, settings):
    """The validation mAP of each (k1, k2, lambda), computed one setting at a time."""
    model, val = tiny['split'][1], tiny['data'].val_sets[0]
    feats, pids, camids = [], [], []
    for images, pid, camid, _, _ in val.val_loader:
        feats.append(model(images))
        pids.append(pid.numpy())
        camids.append(camid.numpy())
    feats, pids, camids = F.normalize(torch.cat(feats), dim=1), np.concatenate(pids), \
        np.concatenate(camids)
    q, g = slice(0, val.num_query), slice(val.num_query, None)
    maps = []
    for k1, k2, lam in settings:
        dist = re_ranking(feats[q], feats[g], k1, k2, lam, tiny['cfg'].TEST.RE_RANKING_DIST)
        maps.append(eval_func(dist, pids[q], pids[g], camids[q], camids[g])[1])
    return np.array(maps)


def chosen(result):
    s = result.extra['selected_rerank']
    return s['k1'], s['k2'], s['lambda']


def test_the_sweep_choice_is_the_validation_argmax(tiny, monkeypatch, tmp_path):
    result, log = run_test_script(tiny, monkeypatch, tmp_path, 'split',
                                  'DATASETS.VAL_IDENTITIES', HELD, *SWEEP)
    settings = [(k1, k2, lam) for k1 in K1 for k2 in K2 for lam in LAMBDA]
    maps = validation_maps(tiny, settings)
    assert len(set(np.round(maps, 6))) > 3  # the settings do differ on this split
    best = int(np.argmax(maps))  # the first maximum
    assert chosen(result) == settings[best]
    table = result.extra['selected_rerank']['validation_sweep']
    assert [(r['k1'], r['k2'], r['lambda']) for r in table] == settings
    assert [r['mAP'] for r in table] == pytest.approx(maps, abs=1e-6)
    assert result.extra['selected_rerank']['val_mAP'] == pytest.approx(maps[best], abs=1e-6)
    # the test split is scored once, with that setting alone: no sweep in the result
    assert 'rerank_sweep' not in result.extra
    k1, k2, lam = settings[best]
    lines = log.splitlines()
    assert any('Results on the validation split, the first setting of the sweep; the chosen '
               'one follows the table (standard protocol, k-reciprocal re-ranking '
               f'k1={K1} k2={K2} lambda={LAMBDA}' in line for line in lines)
    assert any(f'Re-ranking chosen on the validation split: k1={k1} k2={k2} lambda={lam:g} '
               f'(validation mAP {100 * maps[best]:.1f}%' in line for line in lines)
    assert any('Results on the test split, with the re-ranking setting chosen on the validation '
               f'split (standard protocol, k-reciprocal re-ranking k1={k1} k2={k2} lambda={lam}'
               in line for line in lines)
    assert f'{HELD} identities held out of the training set with SOLVER.SEED 1234' in log
    assert 'selection on the test set' not in log

    # the reported test figures are those of a plain run with the chosen scalars
    plain, plain_log = run_test_script(tiny, monkeypatch, tmp_path, 'split',
                                       'TEST.RE_RANKING_K1', k1, 'TEST.RE_RANKING_K2', k2,
                                       'TEST.RE_RANKING_LAMBDA', lam)
    assert dict(result.summary()) == dict(plain.summary())
    assert 'selected_rerank' not in plain.extra and 'selection on the test set' not in plain_log


def test_ties_go_to_the_first_setting(tiny, monkeypatch, tmp_path):
    # lambda 1 keeps the original distances alone: every k1 scores the same
    result, _ = run_test_script(tiny, monkeypatch, tmp_path, 'split', 'DATASETS.VAL_IDENTITIES',
                                HELD, 'TEST.RE_RANKING_K1', '[2, 4, 8]', 'TEST.RE_RANKING_K2',
                                '[2]', 'TEST.RE_RANKING_LAMBDA', '[1.0]')
    table = result.extra['selected_rerank']['validation_sweep']
    assert len({r['mAP'] for r in table}) == 1 and len(table) == 3
    assert chosen(result) == (2, 2, 1.0)
    assert best_row([{'k1': 1, 'k2': 1, 'lambda': 0.0, 'mAP(trapezoid)': m, 'Rank-1': 1 - m}
                     for m in (0.2, 0.7, 0.5, 0.7)]) == 1


def test_without_a_split_the_sweep_stays_on_the_test_split_with_a_warning(tiny, monkeypatch,
                                                                           tmp_path):
    result, log = run_test_script(tiny, monkeypatch, tmp_path, 'all', *SWEEP)
    assert 'selected_rerank' not in result.extra
    first = result.extra['rerank_sweep'][0]
    assert (first['k1'], first['k2'], first['lambda']) == (K1[0], K2[0], LAMBDA[0])
    assert first['mAP'] == result.mAP
    assert 'Re-ranking sweep (the first row is the result above):' in log
    assert 'selection on the test set' in log and 'Results on the validation' not in log


def test_a_split_without_a_sweep_scores_the_test_split_as_before(tiny, monkeypatch, tmp_path):
    result, log = run_test_script(tiny, monkeypatch, tmp_path, 'split',
                                  'DATASETS.VAL_IDENTITIES', HELD)
    plain, _ = run_test_script(tiny, monkeypatch, tmp_path, 'split')
    assert dict(result.summary()) == dict(plain.summary())
    assert 'selected_rerank' not in result.extra and 'Results on the validation' not in log


@pytest.mark.parametrize('checkpoint, why', [('all', 'trained without the split'),
                                             ('other', 'trained on other identities')])
def test_a_checkpoint_not_trained_with_the_split_is_refused(tiny, monkeypatch, tmp_path,
                                                            checkpoint, why):
    with pytest.raises(ReIDError, match=why) as err:
        run_test_script(tiny, monkeypatch, tmp_path, checkpoint,
                        'DATASETS.VAL_IDENTITIES', HELD, *SWEEP)
    assert '\n' not in str(err.value) and 'DATASETS.VAL_IDENTITIES 2' in str(err.value)


def test_unsupervised_checkpoints_are_not_counted(tiny):
    one_row = {'classifier.weight': torch.zeros(1, 8)}
    with pytest.raises(ReIDError, match='other identities'):
        check_trained_without(tiny['cfg'], one_row, tiny['data'])
    cfg = tiny['cfg'].clone()
    cfg.defrost()
    cfg.MODEL.UNSUPERVISED = True
    check_trained_without(cfg, one_row, tiny['data'])  # one row: nothing to check
