"""tools/summarize_runs.py on run folders written by hand (a config.yaml and a metrics.csv, no
training): means and sample standard deviations equal hand-computed ones, the config keys
that differ, the fallback of runs without a validation split, markdown, CSV and errors."""
import csv
import os

import pytest

from _extractor_fixtures import run_tool
from config import load_config
from utils.training_log import CSV_COLUMNS

SCRIPT = 'summarize_runs.py'


def make_run(folder, rows, opts=()):
    """A run folder: config.yaml (defaults + opts, OUTPUT_DIR = folder) and metrics.csv."""
    os.makedirs(folder, exist_ok=True)
    cfg = load_config('', list(opts) + ['OUTPUT_DIR', str(folder)])
    with open(os.path.join(folder, 'config.yaml'), 'w') as f:
        f.write(cfg.dump())
    with open(os.path.join(folder, 'metrics.csv'), 'w', newline='') as f:
        csv.writer(f).writerows([CSV_COLUMNS] + [(s, e, i, n, f'{v:.6g}')
                                                 for s, e, i, n, v in rows])
    return str(folder)


def split_run(folder, seed, last, best=None, best_epoch=3, extra=()):
    """A finished run with a validation split: validation curves, then test/last (and
    test/best) rows; last and best are {metric: fraction}."""
    rows = [('pcl', 1, 10, 'train/loss', 2.0), ('pcl', best_epoch, 10, 'val/mAP', 0.99),
            ('pcl', best_epoch, 10, 'val/Rank-1', 0.99)]
    rows += [('pcl', 4, 40, f'test/last/{m}', v) for m, v in last.items()]
    rows += [('pcl', 4, 40, 'test/last/epoch', 4)]
    if best:
        rows += [('pcl', 4, 40, f'test/best/{m}', v) for m, v in best.items()]
        rows += [('pcl', 4, 40, 'test/best/epoch', best_epoch)]
    return make_run(folder, rows, ['SOLVER.SEED', str(seed), *extra])


def read_table(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def three_seeds(tmp_path):
    return [split_run(tmp_path / f'seed{seed}', seed, {'mAP': m, 'Rank-1': r},
                      {'mAP': b, 'Rank-1': r - 0.02}, best_epoch=seed)
            for seed, m, r, b in ((1, 0.80, 0.90, 0.81), (2, 0.82, 0.93, 0.85),
                                  (3, 0.87, 0.95, 0.86))]


def test_means_and_sample_stds_equal_hand_computed_ones(tmp_path, capsys):
    runs = three_seeds(tmp_path)
    code, out, err = run_tool(SCRIPT, [*runs, '--csv', tmp_path / 'table.csv'], capsys)
    assert code == 0, err
    table = read_table(tmp_path / 'table.csv')
    assert [row['run'] for row in table] == [*runs, 'mean', 'std']
    # only SOLVER.SEED differs (OUTPUT_DIR differs too, and is ignored)
    assert list(table[0])[:3] == ['run', 'SOLVER.SEED', 'selection']
    assert [row['SOLVER.SEED'] for row in table[:3]] == ['1', '2', '3']
    mean, std = table[3], table[4]
    # mAP 0.80, 0.82, 0.87: mean 0.83; deviations -0.03, -0.01, 0.04; squares sum 0.0026;
    # / (3 - 1) = 0.0013; sqrt = 0.0360555127546...
    assert float(mean['final mAP']) == pytest.approx(0.83, abs=1e-12)
    assert float(std['final mAP']) == pytest.approx(0.0360555127546399, abs=1e-12)
    # Rank-1 0.90, 0.93, 0.95: mean 0.9266...; squares sum 0.00126667; / 2; sqrt = 0.0251661
    assert float(mean['final Rank-1']) == pytest.approx(0.9266666666666667, abs=1e-12)
    assert float(std['final Rank-1']) == pytest.approx(0.0251661147842358, abs=1e-12)
    # best mAP 0.81, 0.85, 0.86: mean 0.84; squares 0.0009 + 0.0001 + 0.0004 = 0.0014 -> 0.0007
    assert float(mean['best mAP']) == pytest.approx(0.84, abs=1e-12)
    assert float(std['best mAP']) == pytest.approx(0.0264575131106459, abs=1e-12)
    assert [row['best epoch'] for row in table[:3]] == ['1', '2', '3']
    assert [row['selection'] for row in table[:3]] == ['validation'] * 3
    assert [row['final mAP'] for row in table[:3]] == ['0.8', '0.82', '0.87']
    lines = out.splitlines()
    assert lines[0].split()[:4] == ['run', 'SOLVER.SEED', 'selection', 'final']
    summary = next(line for line in lines if line.startswith('mean ± std'))
    assert '83.0 ± 3.6' in summary and '92.7 ± 2.5' in summary and '84.0 ± 2.6' in summary
    assert 'sample standard deviation' in out
    assert "selection 'none'" not in out and not err.count('warning')


def test_a_run_without_a_validation_split_shows_its_last_epoch_and_no_best(tmp_path, capsys):
    rows = [('stage1', 1, 5, 'train/loss', 3.0),
            ('stage2', 1, 10, 'val/mAP', 0.5), ('stage2', 1, 10, 'val/Rank-1', 0.6),
            ('stage2', 2, 20, 'train/loss', 1.0),
            ('stage2', 2, 20, 'val/mAP', 0.7), ('stage2', 2, 20, 'val/Rank-1', 0.8)]
    plain = make_run(tmp_path / 'plain', rows, ['SOLVER.SEED', '9'])
    split = split_run(tmp_path / 'split', 1, {'mAP': 0.9, 'Rank-1': 0.95})  # no test/best
    code, out, err = run_tool(SCRIPT, [plain, split, '--csv', tmp_path / 't.csv'], capsys)
    assert code == 0, err
    table = read_table(tmp_path / 't.csv')
    assert table[0]['selection'] == 'none' and table[0]['final epoch'] == '2'
    assert (table[0]['final mAP'], table[0]['final Rank-1']) == ('0.7', '0.8')
    assert table[0]['best mAP'] == table[0]['best epoch'] == ''
    assert table[1]['selection'] == 'validation' and table[1]['best mAP'] == ''
    assert table[2]['best mAP'] == table[3]['best mAP'] == ''  # mean, std of no values
    assert "selection 'none': no validation split" in out
    plain_line = next(line for line in out.splitlines() if line.startswith(plain))
    assert plain_line.split()[-4:] == ['-', '-', '-', '-']  # best epoch, val mAP, mAP, Rank-1


def test_one_run_has_no_std_and_markdown_is_a_table(tmp_path, capsys):
    run = split_run(tmp_path / 'only', 1, {'mAP': 0.8, 'Rank-1': 0.9, 'Rank-5': 0.97},
                    {'mAP': 0.81, 'Rank-1': 0.91, 'Rank-5': 0.96})
    code, out, err = run_tool(SCRIPT, [run, '--markdown', '--metrics', 'mAP,Rank-5'], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == ('| run | selection | final epoch | final mAP | final Rank-5 | best epoch '
                        '| val mAP | best mAP | best Rank-5 |')
    assert lines[1] == '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'
    assert lines[2] == f'| {run} | validation | 4 | 80.0 | 97.0 | 3 | 99.0 | 81.0 | 96.0 |'
    assert lines[3] == ('| mean ± std |  |  | 80.0 ± - | 97.0 ± - |  | 99.0 ± - | 81.0 ± - '
                        '| 96.0 ± - |')
    assert "configs are the same" in out


def test_several_test_sets_show_the_first_or_the_one_asked(tmp_path, capsys):
    last = {'market1501/mAP': 0.8, 'market1501/Rank-1': 0.9,
            'dukemtmc/mAP': 0.4, 'dukemtmc/Rank-1': 0.5}
    run = split_run(tmp_path / 'joint', 1, last)
    code, out, _ = run_tool(SCRIPT, [run, '--csv', tmp_path / 'a.csv'], capsys)
    assert code == 0 and 'on market1501' in out
    assert read_table(tmp_path / 'a.csv')[0]['final mAP'] == '0.8'
    code, out, _ = run_tool(SCRIPT, [run, '--dataset', 'dukemtmc', '--csv', tmp_path / 'b.csv'],
                            capsys)
    assert code == 0 and read_table(tmp_path / 'b.csv')[0]['final Rank-1'] == '0.5'
    code, _, err = run_tool(SCRIPT, [run, '--dataset', 'veri'], capsys)
    assert code == 2 and err.strip().endswith('(it has market1501, dukemtmc)')


def test_different_experiments_are_summarized_with_a_warning(tmp_path, capsys):
    a = split_run(tmp_path / 'a', 1, {'mAP': 0.8, 'Rank-1': 0.9})
    b = split_run(tmp_path / 'b', 1, {'mAP': 0.7, 'Rank-1': 0.8},
                  extra=['DATASETS.NAMES', 'dukemtmc'])
    code, out, err = run_tool(SCRIPT, [a, b], capsys)
    assert code == 0
    assert 'warning: the runs differ in DATASETS.NAMES: they are not the same experiment' in err
    assert out.splitlines()[0].split()[:3] == ['run', 'DATASETS.NAMES', 'selection']


def test_bad_run_folders_are_one_error_line(tmp_path, capsys):
    good = split_run(tmp_path / 'good', 1, {'mAP': 0.8, 'Rank-1': 0.9})
    empty = tmp_path / 'empty'
    empty.mkdir()
    untested = make_run(tmp_path / 'untested', [('pcl', 1, 10, 'train/loss', 2.0)])
    for folder, words in ((empty, 'no metrics.csv'), (untested, 'holds no evaluation')):
        code, out, err = run_tool(SCRIPT, [good, folder], capsys)
        assert code == 2 and out == '' and 'Traceback' not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f'error: {folder}: ') and words in line
    os.remove(os.path.join(good, 'config.yaml'))
    code, _, err = run_tool(SCRIPT, [good], capsys)
    assert code == 2 and err.strip() == (f'error: {good}: no config.yaml; give training run '
                                         'folders (their OUTPUT_DIR)')


def test_val_map_is_the_best_validation_map_of_the_run(tmp_path, capsys):
    """The column to choose runs by (e.g. CLUSTER.EPS): the validation mAP of the best
    checkpoint (not of the untrained model before training); no test figure enters it."""
    rows = [('pcl', e, 10 * e, 'val/mAP', v) for e, v in ((0, 0.75), (1, 0.5), (2, 0.7),
                                                          (3, 0.6))]  # epoch 0: untrained
    rows += [('pcl', 3, 30, 'test/last/mAP', 0.9), ('pcl', 3, 30, 'test/last/Rank-1', 0.95),
             ('pcl', 3, 30, 'test/last/epoch', 3), ('pcl', 3, 30, 'test/best/mAP', 0.8),
             ('pcl', 3, 30, 'test/best/Rank-1', 0.9), ('pcl', 3, 30, 'test/best/epoch', 2)]
    run = make_run(tmp_path / 'eps', rows, ['CLUSTER.EPS', '0.6'])
    code, _, err = run_tool(SCRIPT, [run, '--csv', tmp_path / 'eps.csv'], capsys)
    assert code == 0, err
    row = read_table(tmp_path / 'eps.csv')[0]
    assert (row['val mAP'], row['best epoch'], row['best mAP']) == ('0.7', '2', '0.8')
