"""matplotlib plots (utils.plots, tools/plot_cmc.py, tools/plot_curves.py): valid pictures of
the right size, and the numbers drawn (the CSV beside each PNG) equal the run's own: the
evaluation's CMC and sweep table, metrics.csv."""
import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from _e2e_helpers import demo_root, small_opts, tiny_clip
from _extractor_fixtures import run_tool
from config import load_config
from model import make_model
from processor import cli
from utils.checkpoint import save_weights
from utils.errors import ReIDError
from utils.metrics import make_evaluator
from utils.plots import (beside, curve_series, plot_cmc, plot_sweep, plot_training_curves,
                         read_cmc_csv, sweep_grids)
from utils.training_log import TrainingLog, read_metrics


def png(path):
    """(width, height) of a valid PNG file."""
    with Image.open(path) as img:
        assert img.format == 'PNG'
        img.load()
        return img.size


def rows_of(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_cmc_plot_writes_the_curves_it_draws(tmp_path):
    curves = {'plain': np.linspace(0.4, 0.9, 50), 're-ranked': np.linspace(0.5, 0.95, 50)}
    path = plot_cmc(curves, str(tmp_path / 'cmc.png'), title='t')
    assert png(path) == (640, 440)
    back = read_cmc_csv(beside(path))
    assert list(back) == list(curves)
    for label, cmc in curves.items():
        assert np.array_equal(back[label], cmc)
    one = plot_cmc(np.array([0.25, 0.5]), str(tmp_path / 'one.png'))
    assert list(read_cmc_csv(beside(one))) == ['Rank-1 25.0%']


def sweep_result(tmp_path):
    """An evaluation with a re-ranking sweep and TEST.VISUALIZE (pictures to tmp_path)."""
    rng = np.random.default_rng(0)
    pids = rng.permutation(np.repeat(np.arange(10), 5))
    feats = torch.tensor(rng.standard_normal((10, 16))[pids] + 0.8 * rng.standard_normal((50, 16)),
                         dtype=torch.float32)
    cams = rng.integers(0, 3, len(pids))
    cfg = load_config('', ['OUTPUT_DIR', str(tmp_path), 'TEST.VISUALIZE', '1',
                           'TEST.MAX_RANK', '10',
                           'TEST.RE_RANKING', 'True', 'TEST.RE_RANKING_K1', '[4, 6, 8]',
                           'TEST.RE_RANKING_K2', '[1, 3]', 'TEST.RE_RANKING_LAMBDA', '[0.1, 0.3]'])
    evaluator = make_evaluator(cfg, 20, 'standard')
    evaluator.update((feats, torch.tensor(pids), torch.tensor(cams),
                      [str(tmp_path / f'{i}.jpg') for i in range(50)]))
    return evaluator.compute()


def test_evaluation_draws_its_cmc_and_sweep(tmp_path):
    result = sweep_result(tmp_path)
    assert png(tmp_path / 'cmc.png') == (640, 440)
    (label, cmc), = read_cmc_csv(str(tmp_path / 'cmc.csv')).items()
    assert np.array_equal(cmc, result.cmc) and len(cmc) == 10
    assert label == f'mAP {100 * result.mAP:.1f}%, Rank-1 {100 * result.cmc[0]:.1f}%'
    table = result.extra['rerank_sweep']
    assert len(table) == 12
    width, height = png(tmp_path / 'sweep.png')
    assert width > height > 100
    drawn = {(int(r['k1']), int(r['k2']), float(r['lambda'])): float(r['mAP'])
             for r in rows_of(tmp_path / 'sweep.csv')}  # the cells of the heat maps
    assert drawn == {(r['k1'], r['k2'], r['lambda']): r['mAP'] for r in table}


def test_sweep_panels_hold_each_k2(tmp_path):
    table = [dict(k1=k1, k2=k2, **{'lambda': lam, 'mAP': k1 / 100 + k2 / 10 + lam})
             for k1 in (20, 30) for k2 in (3, 6, 9) for lam in (0.1, 0.3)]
    grids = sweep_grids(table)
    assert list(grids) == [3, 6, 9]
    k1s, lams, grid = grids[6]
    assert k1s == [20, 30] and lams == [0.1, 0.3] and grid[1, 0] == 0.3 + 0.6 + 0.1
    wide = png(plot_sweep(table, str(tmp_path / 'three.png')))
    narrow = png(plot_sweep([r for r in table if r['k2'] == 3], str(tmp_path / 'one.png')))
    assert wide[0] > 2 * narrow[0]  # one panel per k2


def write_log(folder):
    """A metrics.csv as training writes it: two stages, losses, LR, validation, clustering."""
    cfg = load_config('', ['OUTPUT_DIR', str(folder), 'SOLVER.TENSORBOARD', 'False'])
    for stage in ('stage1', 'stage2'):
        log = TrainingLog(cfg, stage)
        for it in range(1, 7):
            log.add(1 + it // 3, it * 10, {'train/loss': 3.0 / it, 'train/lr': 1e-4 * it})
            if it % 3 == 0:
                log.add(it // 3, it * 10, {'val/mAP': 0.1 * it, 'val/Rank-1': 0.12 * it,
                                           'cluster/clusters': 10 + it, 'cluster/outliers': it,
                                           'cluster/nmi': 0.5, 'cluster/ari': 0.25})
        log.close()
    return folder / 'metrics.csv'


def test_training_curves_draw_metrics_csv(tmp_path):
    metrics = write_log(tmp_path)
    path = plot_training_curves(str(metrics), str(tmp_path / 'curves.png'))
    width, height = png(path)
    # 2 stages, 5 panels
    assert (width, height) == (round(100 * (1 + 4.6 * 2)), round(100 * (0.6 + 2.4 * 5)))
    drawn = [(r['stage'], r['name'], int(r['iteration']), float(r['value']))
             for r in rows_of(beside(path))]
    logged = [(r['stage'], r['name'], r['iteration'], r['value']) for r in read_metrics(metrics)]
    assert sorted(drawn) == sorted(logged)
    series = curve_series(read_metrics(metrics))
    assert list(series) == ['stage1', 'stage2']
    assert np.array_equal(series['stage2']['train/loss'][0], np.arange(10, 70, 10))


def test_training_curves_without_validation_or_clustering(tmp_path):
    cfg = load_config('', ['OUTPUT_DIR', str(tmp_path), 'SOLVER.TENSORBOARD', 'False'])
    log = TrainingLog(cfg, 'pcl')
    log.add(1, 5, {'train/loss': 1.0, 'train/lr': 0.1})
    log.close()
    path = plot_training_curves(str(tmp_path / 'metrics.csv'), str(tmp_path / 'c.png'))
    assert png(path)[1] == round(100 * (0.6 + 2.4 * 2))  # losses and LR only


def test_plot_curves_tool(tmp_path, capsys):
    write_log(tmp_path / 'run')
    code, out, err = run_tool('plot_curves.py', [tmp_path / 'run'], capsys)
    assert code in (0, None), err
    assert png(tmp_path / 'run' / 'curves.png') and (tmp_path / 'run' / 'curves.csv').exists()
    code, out, err = run_tool('plot_curves.py', [tmp_path / 'none'], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith('error: ') and 'none' in err
    (tmp_path / 'bad.csv').write_text('a,b\n1,2\n')
    code, out, err = run_tool('plot_curves.py', [tmp_path / 'bad.csv'], capsys)
    assert code == 2 and 'not a metrics.csv' in err


def test_plot_cmc_tool_from_csv_files(tmp_path, capsys):
    for name, value in (('a', 0.5), ('b', 0.7)):
        plot_cmc({'x': [value] * 5}, str(tmp_path / name / 'cmc.png'))
    code, _, err = run_tool('plot_cmc.py', ['--csv', tmp_path / 'a' / 'cmc.csv',
                                            tmp_path / 'b' / 'cmc.csv', '--output',
                                            tmp_path / 'both.png'], capsys)
    assert code in (0, None), err
    curves = read_cmc_csv(str(tmp_path / 'both.csv'))
    assert list(curves) == ['a: x', 'b: x'] and np.array_equal(curves['b: x'], [0.7] * 5)
    (tmp_path / 'bad.csv').write_text('no,cmc\n')
    code, _, err = run_tool('plot_cmc.py', ['--csv', tmp_path / 'bad.csv', '--output',
                                            tmp_path / 'x.png'], capsys)
    assert code == 2 and 'bad.csv is not a CMC file' in err


def test_plot_cmc_tool_evaluates_checkpoints_with_and_without_reranking(
        tmp_path_factory, tmp_path, capsys):
    root = demo_root(tmp_path_factory, ('market1501',), ids=12)
    opts = small_opts(root, tiny_clip(tmp_path_factory, 'vit'), tmp_path / 'out',
                      'MODEL.METHOD', 'pcl', 'TEST.RE_RANKING_K1', 6, 'TEST.RE_RANKING_K2', 2)
    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        weights.append(str(tmp_path / f'm{seed}.pth'))
        save_weights(make_model(load_config('', opts), 6, 4, 1), weights[-1])
    code, _, err = run_tool('plot_cmc.py', ['--config_file', '', '--weights', *weights, *opts,
                                            '--rerank', 'both', '--output',
                                            tmp_path / 'cmc.png'], capsys)
    assert code in (0, None), err
    curves = read_cmc_csv(str(tmp_path / 'cmc.csv'))
    assert len(curves) == 4 and png(tmp_path / 'cmc.png') == (640, 440)
    labels = list(curves)
    assert labels[0].startswith('m0.pth: mAP') and labels[1].startswith('m0.pth, re-ranked')
    for on, label in ((False, labels[2]), (True, labels[3])):
        result = cli.evaluate(load_config('', opts + ['TEST.WEIGHT', weights[1],
                                                      'TEST.RE_RANKING', str(on)]))
        assert np.array_equal(curves[label], result.cmc)
        assert f'mAP {100 * result.mAP:.1f}%' in label
    assert not np.array_equal(curves[labels[0]], curves[labels[1]])


def test_bad_cmc_output_name(capsys, tmp_path):
    code, _, err = run_tool('plot_cmc.py', ['--csv', tmp_path / 'a.csv', '--output',
                                            tmp_path / 'x.jpg'], capsys)
    assert code == 2 and '--output must name a .png' in err


def test_read_cmc_csv_rejects_a_non_number(tmp_path):
    (tmp_path / 'c.csv').write_text('rank,x\n1,0.5\n2,oops\n')
    with pytest.raises(ReIDError, match="column 'x'"):
        read_cmc_csv(str(tmp_path / 'c.csv'))
    assert os.path.exists(tmp_path / 'c.csv')
