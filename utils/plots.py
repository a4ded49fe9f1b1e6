"""Plots with matplotlib: CMC curves, the re-ranking sweep, training curves.

Every plot writes its PNG and, beside it, a CSV of exactly the numbers it drew (same name,
.csv): a user can re-plot or restyle them, and tests compare them with the run's own files.
The figures use matplotlib's object API (matplotlib.figure.Figure), never pyplot: no global
backend or state is touched, so plotting works the same in scripts, threads and notebooks.

- plot_cmc: several CMC curves on one 0-100% axis (re-ranking on / off, checkpoints).
- plot_sweep: mAP of a re-ranking sweep as heat maps over (k1, lambda), one panel per k2.
- plot_training_curves: metrics.csv of a run (utils.training_log) as one PNG: losses, LR,
  validation metrics and, for unsupervised runs, clusters / outliers / NMI / ARI per
  clustering; one column per training stage.
"""
import csv
import os
from collections import OrderedDict

import numpy as np
from matplotlib.figure import Figure

from .atomic import atomic_write

DPI = 100


def beside(path, ext='.csv'):
    """The file beside `path` holding its numbers: same name, extension `ext`."""
    return os.path.splitext(path)[0] + ext


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=DPI)
    return path


def _write_csv(path, header, rows):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ----- CMC ---------------------------------------------------------------------------------
def plot_cmc(curves, path, title='CMC'):
    """Draw CMC curve(s) (fractions 0..1 per rank) on a 0-100% axis: an array (legend: its
    Rank-1) or a dict legend label -> array. Writes path and beside(path): a CSV with a
    'rank' column and one column per curve (fractions; empty past a shorter curve's end)."""
    if not isinstance(curves, dict):
        curves = {f'Rank-1 {100 * float(np.asarray(curves)[0]):.1f}%': curves}
    curves = OrderedDict((str(k), np.asarray(v, dtype=float).reshape(-1))
                         for k, v in curves.items())
    ranks = max(len(c) for c in curves.values())
    fig = Figure(figsize=(6.4, 4.4), layout='constrained')
    ax = fig.add_subplot()
    for label, cmc in curves.items():
        ax.plot(np.arange(1, len(cmc) + 1), 100 * cmc, label=label, linewidth=1.8,
                marker='o' if len(cmc) == 1 else None)
    ax.set_xlim(1, max(ranks, 2))
    ax.set_ylim(0, 100)
    ax.set_xlabel('rank')
    ax.set_ylabel('matching rate (%)')
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc='lower right', fontsize=9)
    _write_csv(beside(path), ['rank', *curves],
               [[r + 1, *(repr(float(c[r])) if r < len(c) else '' for c in curves.values())]
                for r in range(ranks)])
    return _save(fig, path)


def read_cmc_csv(path):
    """{label: array of fractions} of a CSV plot_cmc wrote."""
    from .errors import ReIDError
    try:
        with open(path, newline='') as f:
            rows = list(csv.reader(f))
    except OSError as err:
        raise ReIDError(f'cannot read CMC file {path}: {err.strerror}') from None
    if not rows or rows[0][:1] != ['rank'] or len(rows[0]) < 2:
        raise ReIDError(f'{path} is not a CMC file of the evaluation (cmc.csv beside cmc.png, '
                        "with a 'rank' column and one column per curve)")
    curves = OrderedDict()
    for col, label in enumerate(rows[0][1:], 1):
        try:
            curves[label] = np.array([float(r[col]) for r in rows[1:] if r[col] != ''])
        except (ValueError, IndexError):
            raise ReIDError(f'{path}: column {label!r} holds a value that is not a '
                            'number') from None
    return curves


# ----- re-ranking sweep ---------------------------------------------------------------------
def sweep_grids(table, metric='mAP'):
    """{k2: (k1 values, lambda values, grid [k1, lambda] of `metric`)} of a sweep table (rows
    with k1, k2, lambda and the metrics: utils.protocols.sweep_table, the evaluation's
    extra['rerank_sweep']); NaN where the sweep did not score a setting."""
    k1s = sorted({row['k1'] for row in table})
    lams = sorted({row['lambda'] for row in table})
    grids = OrderedDict()
    for k2 in sorted({row['k2'] for row in table}):
        grid = np.full((len(k1s), len(lams)), np.nan)
        for row in table:
            if row['k2'] == k2:
                grid[k1s.index(row['k1']), lams.index(row['lambda'])] = row[metric]
        grids[k2] = (k1s, lams, grid)
    return grids


def plot_sweep(table, path, metric='mAP', title='re-ranking sweep'):
    """Heat maps of `metric` (in %) over (k1 rows, lambda columns), one panel per k2
    (sweep_grids). Writes path and beside(path): k1, k2, lambda and the metric of every cell
    drawn, read back from the grids."""
    grids = sweep_grids(table, metric)
    k1s, lams, _ = next(iter(grids.values()))
    fig = Figure(figsize=(1.2 + 3.2 * len(grids), 2.2 + 0.45 * len(k1s)), layout='constrained')
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    values = np.concatenate([100 * g.ravel() for _, _, g in grids.values()])
    low, high = np.nanmin(values), np.nanmax(values)
    image, cells = None, []
    for ax, (k2, (_, _, grid)) in zip(axes, grids.items()):
        image = ax.imshow(100 * grid, cmap='viridis', vmin=low,
                          vmax=high if high > low else low + 1, aspect='auto')
        for i, j in zip(*np.nonzero(np.isfinite(grid))):
            ax.text(j, i, f'{100 * grid[i, j]:.1f}', ha='center', va='center', fontsize=8,
                    color='white' if 100 * grid[i, j] < (low + high) / 2 else 'black')
            cells.append([k1s[i], k2, repr(float(lams[j])), repr(float(grid[i, j]))])
        ax.set_xticks(range(len(lams)), [f'{v:g}' for v in lams])
        ax.set_yticks(range(len(k1s)), [str(v) for v in k1s])
        ax.set_xlabel('lambda')
        if ax is axes[0]:
            ax.set_ylabel('k1')
        ax.set_title(f'k2 = {k2}', fontsize=10)
    fig.colorbar(image, ax=list(axes), label=f'{metric} (%)')
    fig.suptitle(title, fontsize=10)
    _write_csv(beside(path), ['k1', 'k2', 'lambda', metric], cells)
    return _save(fig, path)


# ----- training curves ----------------------------------------------------------------------
PANELS = (  # (title, which names) in the order drawn, top to bottom
    ('losses', lambda name: name.startswith('train/') and name != 'train/lr'
     and not name.startswith('train/acc')),
    ('training accuracy', lambda name: name.startswith('train/acc')),
    ('learning rate', lambda name: name == 'train/lr'),
    ('validation (%)', lambda name: name.startswith('val/')),
    ('clustering: clusters, outliers', lambda name: name in ('cluster/clusters',
                                                             'cluster/outliers')),
    ('clustering vs train labels', lambda name: name in ('cluster/nmi', 'cluster/ari')),
)


def curve_series(rows):
    """{stage: {name: (iterations, values)}} of metrics.csv rows (utils.training_log.
    read_metrics), stages and names in the order they first appear, points in file order."""
    series = OrderedDict()
    for row in rows:
        points = series.setdefault(row['stage'], OrderedDict()).setdefault(row['name'], ([], []))
        points[0].append(row['iteration'])
        points[1].append(row['value'])
    return OrderedDict((stage, OrderedDict((name, (np.array(x), np.array(y)))
                                           for name, (x, y) in names.items()))
                       for stage, names in series.items())


def plot_training_curves(metrics_csv, path, title=''):
    """One PNG of a run's metrics.csv: a row of panels per kind (PANELS) that the run logged,
    a column per stage, x = the stage's iteration. Validation metrics are drawn in %, the
    rest as logged. Writes path and beside(path): stage, name, iteration, value of every
    point drawn (the metrics.csv values). Returns path, or None when the file holds no rows."""
    from .errors import ReIDError
    from .training_log import read_metrics
    try:
        rows = read_metrics(metrics_csv)
    except OSError as err:
        raise ReIDError(f'cannot read {metrics_csv}: {err.strerror}') from None
    except (KeyError, ValueError, TypeError) as err:
        raise ReIDError(f'{metrics_csv} is not a metrics.csv of a training run (columns stage, '
                        f'epoch, iteration, name, value): {type(err).__name__}: {err}') from None
    series = curve_series(rows)
    if not series:
        return None
    names = [n for stage in series.values() for n in stage]
    panels = [(t, keep) for t, keep in PANELS if any(keep(n) for n in names)]
    fig = Figure(figsize=(1 + 4.6 * len(series), 0.6 + 2.4 * len(panels)), layout='constrained')
    axes = fig.subplots(len(panels), len(series), squeeze=False, sharex='col')
    drawn = []
    for col, (stage, curves) in enumerate(series.items()):
        for row, (panel, keep) in enumerate(panels):
            ax = axes[row][col]
            for name, (x, y) in curves.items():
                if not keep(name):
                    continue
                scale = 100 if name.startswith('val/') else 1
                ax.plot(x, scale * y, label=name.split('/', 1)[1],
                        marker='o' if name.startswith(('val/', 'cluster/')) else None,
                        markersize=3, linewidth=1.4)
                drawn += [(stage, name, int(i), repr(float(v))) for i, v in zip(x, y)]
            if panel == 'learning rate' and ax.lines:
                ax.set_yscale('log')
            if ax.lines:
                ax.legend(fontsize=7, loc='best')
            ax.grid(True, alpha=0.3)
            ax.set_title(f'{stage}: {panel}', fontsize=9)
            if row == len(panels) - 1:
                ax.set_xlabel('iteration')
    if title:
        fig.suptitle(title, fontsize=10)
    _write_csv(beside(path), ['stage', 'name', 'iteration', 'value'], drawn)
    return _save(fig, path)
