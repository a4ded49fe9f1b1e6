"""Seed statistics: the test figures of several training runs in one table, with their mean
and standard deviation, and the config keys on which the runs differ.

The same config with three seeds, then the table:

    for seed in 1 2 3; do
        python train_pcl.py --config_file configs/pcl/market1501.yml \\
            DATASETS.VAL_IDENTITIES 100 SOLVER.EVAL_PERIOD 5 SOLVER.SEED $seed \\
            OUTPUT_DIR logs/pcl_seed$seed
    done
    python tools/summarize_runs.py logs/pcl_seed*

Each RUN_DIR is a training run's OUTPUT_DIR; its metrics.csv and config.yaml are read. One
row per run:
- final: the test figures of the checkpoint at the end of training (test/last/* rows, which
  a run with a validation split, DATASETS.VAL_IDENTITIES > 0, writes when it ends). A run
  without a validation split has selection 'none': its final figures are the val/* rows of
  its last evaluated epoch, which are test-split figures then.
- best: the test figures of the checkpoint chosen on the validation split (test/best/*), its
  epoch and its validation mAP (val mAP: choose between runs, e.g. of several CLUSTER.EPS,
  by that column, never by a test figure); '-' for a run without a validation split
  (nothing chosen on the test set).
- one column per config key whose value differs between the runs (OUTPUT_DIR ignored).
Then mean ± standard deviation of each column over the runs that have the value: the sample
standard deviation (n - 1 in the denominator), '-' with one value.

Figures are percentages with one decimal (--metrics chooses them: mAP, Rank-1, Rank-5,
Rank-10; mAP also matches the animal protocol's mAP(<mode>)). A run scored on several test
sets shows its first one (the run's result), or --dataset. --markdown prints a Markdown
table; --csv PATH also writes the table as CSV (runs, then a mean and a std row) with the
figures as unrounded fractions, as in metrics.csv.
"""
import argparse
import csv
import os
import statistics
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.atomic import atomic_write  # noqa: E402
from utils.errors import ReIDError, cli_main  # noqa: E402
from utils.training_log import CSV_NAME, read_metrics  # noqa: E402

CONFIG_NAME = 'config.yaml'
IGNORED_KEYS = {'OUTPUT_DIR'}
EXPERIMENT_KEYS = ('DATASETS.NAMES', 'DATASETS.TEST_NAMES', 'MODEL.METHOD')
NO_SPLIT_NOTE = ("selection 'none': no validation split: final figures are those of the last "
                 "evaluated epoch on the test split; no best-by-validation figures")


def flat_config(tree, prefix=''):
    """{dotted key: value} of a loaded config.yaml."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f'{prefix}{key}.'))
        else:
            out[prefix + str(key)] = value
    return out


def _split(rest):
    """'mAP' -> ('', 'mAP'); 'dukemtmc/mAP' -> ('dukemtmc', 'mAP')."""
    dataset, _, metric = rest.rpartition('/')
    return dataset, metric


def _of_dataset(values, dataset, folder):
    """{metric: value} of one test set out of {(dataset, metric): value}."""
    names = list(dict.fromkeys(d for d, _ in values))
    if dataset and dataset not in names:
        raise ReIDError(f'{folder}: no figures on dataset {dataset} (it has '
                        f'{", ".join(n or "one unnamed test set" for n in names)})')
    chosen = dataset or names[0]
    return chosen, {m: v for (d, m), v in values.items() if d == chosen}


def run_figures(folder, dataset=''):
    """What the table shows of one run: {'config', 'selection', 'dataset', 'final', 'best',
    'final epoch', 'best epoch'}; final and best are {metric: fraction}."""
    paths = [os.path.join(folder, name) for name in (CSV_NAME, CONFIG_NAME)]
    for path in paths:
        if not os.path.isfile(path):
            raise ReIDError(f'{folder}: no {os.path.basename(path)}; give training run '
                            'folders (their OUTPUT_DIR)')
    try:
        rows = read_metrics(paths[0])
        with open(paths[1]) as f:
            config = flat_config(yaml.safe_load(f) or {})
    except (KeyError, ValueError, TypeError, AttributeError, yaml.YAMLError) as err:
        raise ReIDError(f'{folder}: cannot read its {CSV_NAME} / {CONFIG_NAME} ({err})') from None
    latest = {row['name']: row['value'] for row in rows}  # a rewritten name: its last row
    tests = {k: {_split(n[len(k) + 6:]): v for n, v in latest.items()
                 if n.startswith(f'test/{k}/') and n != f'test/{k}/epoch'}
             for k in ('last', 'best')}
    run = {'config': config, 'best': {}, 'best epoch': latest.get('test/best/epoch'),
           'val mAP': None}
    if tests['last']:
        run['selection'], run['final epoch'] = 'validation', latest.get('test/last/epoch')
        best_epoch = latest.get('test/best/epoch')
        val_maps = [row['value'] for row in rows if row['name'].startswith('val/')
                    and _split(row['name'][4:])[1].split('(')[0] == 'mAP'
                    and row['epoch'] == best_epoch]  # the best checkpoint's
        run['val mAP'] = val_maps[-1] if val_maps else None
        run['dataset'], run['final'] = _of_dataset(tests['last'], dataset, folder)
        if tests['best']:
            run['best'] = _of_dataset(tests['best'], run['dataset'], folder)[1]
        return run
    evaluated = [row for row in rows if row['name'].startswith('val/')]
    if not evaluated:
        raise ReIDError(f'{folder}: its {CSV_NAME} holds no evaluation (no val/ or test/ rows)')
    if (config.get('DATASETS.VAL_IDENTITIES') or 0) > 0:
        raise ReIDError(f'{folder}: has a validation split but no test/last rows: its '
                        'training has not finished')
    last = evaluated[-1]
    values = {_split(row['name'][4:]): row['value'] for row in evaluated
              if (row['stage'], row['iteration']) == (last['stage'], last['iteration'])}
    run['selection'], run['final epoch'] = 'none', last['epoch']
    run['dataset'], run['final'] = _of_dataset(values, dataset, folder)
    return run


def pick(values, metric):
    """values[metric]; 'mAP' also matches 'mAP(trapezoid)'. None when absent."""
    if metric in values:
        return values[metric]
    return next((v for name, v in values.items() if name.startswith(metric + '(')), None)


def differing_keys(configs):
    keys = sorted(set().union(*configs) - IGNORED_KEYS)
    return [k for k in keys if any(c.get(k, '-') != configs[0].get(k, '-') for c in configs)]


def mean_std(values):
    """(mean, sample standard deviation or None, n) of the values that are not None."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None, \
        len(values)


def table(folders, runs, metrics):
    """(header, rows of cells, columns of figures): cells are str, int or fractions."""
    keys = differing_keys([r['config'] for r in runs])
    header = ['run', *keys, 'selection', 'final epoch', *(f'final {m}' for m in metrics),
              'best epoch', 'val mAP', *(f'best {m}' for m in metrics)]
    rows = []
    for folder, run in zip(folders, runs):
        epochs = [run[k] if run[k] is None else int(run[k]) for k in ('final epoch', 'best epoch')]
        rows.append([os.path.normpath(folder), *(str(run['config'].get(k, '-')) for k in keys),
                     run['selection'], epochs[0], *(pick(run['final'], m) for m in metrics),
                     epochs[1], run['val mAP'], *(pick(run['best'], m) for m in metrics)])
    figures = [i for i, name in enumerate(header) if name == 'val mAP' or
               name.startswith(('final ', 'best ')) and not name.endswith(' epoch')]
    return header, rows, figures


def percent(value):
    return '-' if value is None else f'{100 * value:.1f}'


def text_cells(header, rows, figures):
    """The table as strings, with a 'mean ± std' row."""
    cells = [[percent(c) if i in figures else '-' if c is None else str(c)
              for i, c in enumerate(row)] for row in rows]
    summary = ['mean ± std'] + [''] * (len(header) - 1)
    for i in figures:
        mean, std, n = mean_std([row[i] for row in rows])
        if n:
            summary[i] = f'{percent(mean)} ± {percent(std)}' + (
                f' (n={n})' if n < len(rows) else '')
    return cells + [summary]


def numeric(header):
    return {i for i, name in enumerate(header) if name.startswith(('final ', 'best ', 'val '))}


def format_text(header, cells):
    right = numeric(header)
    widths = [max(len(row[i]) for row in [header] + cells) for i in range(len(header))]
    lines = ['  '.join(c.rjust(w) if i in right else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in [header] + cells]
    return '\n'.join(lines[:1] + ['  '.join('-' * w for w in widths)] + lines[1:])


def format_markdown(header, cells):
    rule = ['---:' if i in numeric(header) else '---' for i in range(len(header))]
    return '\n'.join('| ' + ' | '.join(row) + ' |' for row in [header, rule] + cells)


def write_csv(path, header, rows, figures):
    stats = [mean_std([row[i] for row in rows]) if i in figures else (None, None, 0)
             for i in range(len(header))]
    extra = [['mean'] + [s[0] for s in stats[1:]], ['std'] + [s[1] for s in stats[1:]]]
    with atomic_write(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([['' if c is None else repr(c) if isinstance(c, float) else c
                           for c in row] for row in rows + extra])


def notes(runs, header):
    datasets = sorted({r['dataset'] for r in runs if r['dataset']})
    out = [f'figures in %{" on " + ", ".join(datasets) if datasets else ""}; final: the '
           'checkpoint at the end of training; best: the checkpoint chosen on the validation '
           'split (its epoch in best epoch, its validation mAP in val mAP: compare runs, e.g. '
           'of several CLUSTER.EPS, by that column)',
           'mean ± std over the runs that have the value (n when fewer than all); std is the '
           'sample standard deviation (n - 1)']
    if any(r['selection'] == 'none' for r in runs):
        out.append(NO_SPLIT_NOTE)
    if header[1] == 'selection':
        out.append('the runs\' configs are the same (OUTPUT_DIR aside)')
    return out


def main():
    parser = argparse.ArgumentParser(
        description='Summarize training runs (seeds): final and best-by-validation test '
        'figures, mean ± sample std, the config keys that differ',
        epilog=__doc__[__doc__.index('The same config'):__doc__.index('Each RUN_DIR')],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', metavar='RUN_DIR', help='training run folders')
    parser.add_argument('--metrics', default='mAP,Rank-1',
                        help='comma-separated metrics to show (default mAP,Rank-1)')
    parser.add_argument('--dataset', default='',
                        help='with several test sets: the one to show (default: the first)')
    parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
    parser.add_argument('--csv', default='', metavar='PATH',
                        help='also write the table to PATH: runs, a mean and a std row; '
                        'figures as unrounded fractions (0.853 = 85.3%%)')
    args = parser.parse_args()
    metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
    if not metrics:
        raise ReIDError('--metrics names no metric')
    runs = [run_figures(folder, args.dataset) for folder in args.runs]
    for metric in metrics:
        if all(pick(r['final'], metric) is None for r in runs):
            raise ReIDError(f'no run has the metric {metric} (they have: '
                            f'{", ".join(sorted(set().union(*(r["final"] for r in runs))))})')
    header, rows, figures = table(args.runs, runs, metrics)
    differ = [k for k in EXPERIMENT_KEYS if k in header]
    if differ:
        print(f'warning: the runs differ in {", ".join(differ)}: they are not the same '
              'experiment', file=sys.stderr)
    cells = text_cells(header, rows, figures)
    if args.markdown:
        print(format_markdown(header, cells))
        print('\n' + '\n\n'.join(notes(runs, header)))
    else:
        print(format_text(header, cells))
        print('\n' + '\n'.join(notes(runs, header)))
    if args.csv:
        write_csv(args.csv, header, rows, figures)
        print(f'table written to {args.csv}', file=sys.stderr)


if __name__ == '__main__':
    cli_main(main)()
