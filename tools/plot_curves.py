"""The training curves of a run as one PNG, from its metrics.csv.

    python tools/plot_curves.py output/run [--output curves.png]

Draws losses, learning rate, validation metrics and, for unsupervised runs, clusters,
outliers and NMI / ARI per clustering (utils.plots.plot_training_curves), one column per
training stage; writes the PNG (default OUTPUT_DIR/curves.png, as SOLVER.PLOT_CURVES does at
the end of training) and the plotted numbers beside it (curves.csv).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import ReIDError, cli_main  # noqa: E402
from utils.plots import plot_training_curves  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description='Draw the training curves of a run')
    parser.add_argument('run', help='the run folder (OUTPUT_DIR) or its metrics.csv')
    parser.add_argument('--output', default='', help='the PNG (default: <run>/curves.png)')
    args = parser.parse_args()
    metrics = args.run if args.run.endswith('.csv') else os.path.join(args.run, 'metrics.csv')
    if not os.path.isfile(metrics):
        raise ReIDError(f'{metrics} does not exist: give a run folder (OUTPUT_DIR of a '
                        'training run) or its metrics.csv')
    output = args.output or os.path.join(os.path.dirname(metrics), 'curves.png')
    path = plot_training_curves(metrics, output)
    if path is None:
        raise ReIDError(f'{metrics} holds no curves yet')
    print(f'training curves drawn in {path} (numbers in {os.path.splitext(path)[0]}.csv)')


if __name__ == '__main__':
    cli_main(main)()
