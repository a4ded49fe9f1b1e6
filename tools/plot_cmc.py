"""Several CMC curves on one axis: checkpoints, re-ranking on and off, earlier evaluations.

    python tools/plot_cmc.py --config_file output/run/config.yaml \
        --weights output/run/ViT-B-16_30.pth output/run/ViT-B-16_60.pth --rerank both \
        --output cmc_compare.png
    python tools/plot_cmc.py --csv output/a/cmc.csv output/b/cmc.csv --output cmc_compare.png

--weights evaluates each checkpoint as test_clipreid.py does (the config's dataset and
protocol; without --weights, TEST.WEIGHT of the config / overrides), with re-ranking off,
on (TEST.RE_RANKING_* settings) or both (--rerank). --csv adds curves an evaluation drew
before (cmc.csv, written beside cmc.png by TEST.VISUALIZE, or this tool's own CSV). Each
curve is labelled with its checkpoint (or CSV file), re-ranking, mAP and Rank-1. Writes
--output (PNG) and the CSV of the plotted curves beside it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import is_config_key, load_config, make_parser, parse_args  # noqa: E402
from processor.cli import evaluate  # noqa: E402
from utils.errors import ReIDError, cli_main  # noqa: E402
from utils.logger import setup_logger  # noqa: E402
from utils.plots import plot_cmc, read_cmc_csv  # noqa: E402

RERANK = {'off': (False,), 'on': (True,), 'both': (False, True)}


def evaluated_curves(config_file, opts, weights, rerank):
    """{label: cmc} of each checkpoint x re-ranking setting."""
    curves = {}
    for weight in weights or ['']:
        for on in RERANK[rerank]:
            extra = ['TEST.RE_RANKING', str(on), 'TEST.VISUALIZE', '0', 'TEST.DIST_MAT', '']
            cfg = load_config(config_file, list(opts) + (['TEST.WEIGHT', weight] if weight
                                                         else []) + extra)
            result = evaluate(cfg)
            name = os.path.basename(cfg.TEST.WEIGHT)
            label = f'{name}{", re-ranked" if on else ""}: mAP {100 * result.mAP:.1f}%, ' \
                    f'Rank-1 {100 * result.cmc[0]:.1f}%'
            curves[label] = result.cmc
    return curves


def csv_curves(paths):
    curves = {}
    for path in paths:
        folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
        for label, cmc in read_cmc_csv(path).items():
            curves[f'{folder}: {label}' if len(paths) > 1 else label] = cmc
    return curves


def main():
    parser = make_parser('Draw several CMC curves on one axis')
    parser.add_argument('--weights', nargs='+', default=[], help='checkpoints to evaluate')
    parser.add_argument('--rerank', choices=sorted(RERANK), default='off',
                        help='evaluate with re-ranking off, on, or both')
    parser.add_argument('--csv', nargs='+', default=[], help='cmc.csv files of evaluations')
    parser.add_argument('--output', required=True, help='the PNG to write')
    parser.add_argument('--title', default='CMC', help='title of the plot')
    args = parse_args('', parser=parser)
    for name in ('weights', 'csv'):  # overrides written right after the files
        values = getattr(args, name)
        keys = [i for i, token in enumerate(values) if is_config_key(token)]
        if keys:
            setattr(args, name, values[:keys[0]])
            args.opts = values[keys[0]:] + args.opts
    if not args.output.lower().endswith('.png'):
        raise ReIDError(f'--output must name a .png file, not {args.output}')
    logger = setup_logger()
    curves = csv_curves(args.csv)
    if args.weights or args.config_file or not args.csv:
        curves.update(evaluated_curves(args.config_file, args.opts, args.weights, args.rerank))
    path = plot_cmc(curves, args.output, title=args.title)
    logger.info('%d CMC curves drawn in %s (numbers in %s)', len(curves), path,
                os.path.splitext(path)[0] + '.csv')


if __name__ == '__main__':
    cli_main(main)()
