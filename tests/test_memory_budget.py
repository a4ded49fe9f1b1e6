"""TEST.MEMORY_BUDGET: chunks sized from a budget, results unchanged, peak memory within it."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from utils.distance import BLOCK, chunk_rows
from utils.errors import ReIDError
from utils.memory import GIB, budget_bytes
from utils.metrics import R1_mAP_eval
from utils.protocols import DistanceSpec
from utils.ranking import RANK_BYTES_PER_ENTRY
from utils.reranking import re_ranking, re_ranking_sweep

REPO = __file__.rsplit('/tests/', 1)[0]


def labelled(q, g, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pids = torch.randint(0, max(2, (q + g) // 6), (q + g,), generator=gen)
    centres = torch.randn(int(pids.max()) + 1, dim, generator=gen)
    feats = centres[pids] + 0.7 * torch.randn(q + g, dim, generator=gen)
    return feats, pids, torch.randint(0, 4, (q + g,), generator=gen)


def evaluate(feats, pids, cams, q, **kw):
    evaluator = R1_mAP_eval(q, keep_distmat=False, **kw)
    evaluator.update((feats, pids, cams))
    return evaluator.compute()


def test_a_budget_that_fits_keeps_todays_chunks():
    spec = DistanceSpec().fitted(8 * GIB, 20_000, 'cpu')
    assert spec.rows is None and spec.block == BLOCK and spec.budget == 8 * GIB


@pytest.mark.parametrize('device', ['cpu', 'cuda'])
def test_a_small_budget_shrinks_the_chunks_to_fit(device):
    g = 1_000_000
    spec = DistanceSpec().fitted(1 * GIB, g, device)
    assert spec.rows % spec.block == 0 and 1 <= spec.block < BLOCK
    assert spec.rows < chunk_rows(g, BLOCK)
    per_entry = 4 if device == 'cpu' else 4 + RANK_BYTES_PER_ENTRY
    reserve = (RANK_BYTES_PER_ENTRY * 2 ** 22 if device == 'cpu' else 0) + 64 * g
    assert spec.rows * g * per_entry + reserve <= 1 * GIB
    assert (spec.rows + spec.block) * g * per_entry + reserve > 1 * GIB  # no smaller than needed


def test_a_budget_too_small_for_one_row_is_refused():
    with pytest.raises(ReIDError, match='TEST.MEMORY_BUDGET'):
        DistanceSpec().fitted(10 << 20, 1_000_000, 'cpu')


@pytest.mark.parametrize('value', [-1, float('inf'), float('nan'), 'a lot'])
def test_bad_budgets_are_refused(value):
    with pytest.raises(ReIDError, match='TEST.MEMORY_BUDGET'):
        R1_mAP_eval(5, memory_budget=value)


def test_auto_budget_is_half_the_free_memory(monkeypatch):
    monkeypatch.setattr('utils.memory.free_bytes', lambda device: 10 * GIB)
    assert budget_bytes(0) == budget_bytes(None) == 5 * GIB
    assert budget_bytes(1.5) == int(1.5 * GIB)


def test_results_do_not_depend_on_the_budget():
    feats, pids, cams = labelled(300, 30000)
    whole = evaluate(feats, pids, cams, 300)
    # 30,000 gallery images: 0.08 GiB leaves room for about 150 query rows per chunk
    spec = DistanceSpec().fitted(int(0.08 * GIB) - 2 * feats.nbytes, 30000, 'cpu')
    assert spec.rows < 300
    small = evaluate(feats, pids, cams, 300, memory_budget=0.08)
    assert small.mAP == whole.mAP and np.array_equal(small.cmc, whole.cmc)


def test_reranking_within_a_budget_and_refused_below_its_matrix():
    feats, _, _ = labelled(120, 600)
    q, g = feats[:120], feats[120:]
    expected = re_ranking(q, g, 20, 6, 0.3)
    chunks = list(re_ranking_sweep(q, g, 20, 6, 0.3, memory_budget=2 << 20))
    assert len(chunks) > 1  # the budget did cut the queries
    ours = torch.cat([c for _, _, _, c in chunks]).numpy()
    assert np.abs(ours - expected).max() < 1e-3
    with pytest.raises(ReIDError, match='TEST.MEMORY_BUDGET'):
        next(re_ranking_sweep(q, g, 20, 6, 0.3, memory_budget=4 * 120 * 600))


def test_peak_memory_stays_within_the_budget():
    # 400 x 300,000: today's fixed 1,024-row chunks would hold all 400 rows (0.45 GiB) at once
    cmd = [sys.executable, 'benchmarks/bench_large_gallery.py', '--child', 'evaluation',
           '--queries', '400', '--gallery', '300000', '--dim', '8', '--budget', '0.15',
           '--threads', '1']
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 < figures['added_gib'] <= 0.15
