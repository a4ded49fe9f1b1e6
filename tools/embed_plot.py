"""A 2-D map of the features of some identities: colour = identity, marker = camera.

    python tools/embed_plot.py --features gallery.npz --ids 12 --output embedding.png
    python tools/embed_plot.py --config_file output/run/config.yaml --split query --ids 12 \
        --output embedding.png TEST.WEIGHT output/run/ViT-B-16_60.pth

Features come from an .npz of tools/extract_features.py (--features) or are extracted from a
split of the config's dataset (--split query|gallery|train, with the model of TEST.WEIGHT).
The map is t-SNE (scikit-learn), or UMAP when umap-learn is installed (--method auto; or
name one). --ids draws that many identities at random (--seed); images of identity -1
(junk, distractors) are left out. Writes --output (PNG) and the 2-D coordinates beside it
(.csv: path, the label coloured by, camid, x, y).

Colours for unsupervised runs (--color-by):
- identity: the dataset's identities (default);
- pseudo: the pseudo-labels of the run's last clustering, which training saves in its state
  file (<OUTPUT_DIR>/<MODEL.NAME>_pcl_unsup_state.pth, or --state): with --split train only,
  the images they label;
- cluster: clusters the features now with utils.clustering.cluster_features and the run's
  CLUSTER settings (K1, K2, EPS, MIN_SAMPLES); needs no saved state. Outliers (-1) are left
  out. The clusters of features of the final model differ from the last training epoch's.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import load_config, make_parser, parse_args  # noqa: E402
from datasets.image_lists import SPLITS  # noqa: E402
from processor.gallery import load_gallery  # noqa: E402
from utils.errors import ReIDError, cli_main  # noqa: E402
from utils.embedding import METHODS, embed_2d, pick_labels, plot_embedding  # noqa: E402
from utils.logger import setup_logger  # noqa: E402

COLOURINGS = ('identity', 'pseudo', 'cluster')


def split_features(config_file, opts, split):
    """(features, ImageList, cfg) of a split, extracted as tools/extract_features.py does."""
    from datasets import init_dataset
    from datasets.image_lists import split_images
    from datasets.make_dataloader import dataset_kwargs
    from processor import FeatureExtractor
    extractor = FeatureExtractor(config_file, None, opts)
    cfg = extractor.cfg
    dataset = init_dataset(cfg.DATASETS.NAMES, root=cfg.DATASETS.ROOT_DIR,
                           **dataset_kwargs(cfg, training=split == 'train'))
    images = split_images(dataset, split)
    return extractor(images.paths, images.camids, images.viewids).numpy(), images, cfg


def saved_pseudo_labels(cfg, state, count):
    """The pseudo-labels of the run's training state (its last clustering)."""
    from utils.checkpoint import load_training_state, model_file_name, state_path
    path = state or state_path(cfg.OUTPUT_DIR, model_file_name(cfg), 'pcl_unsup')
    if not os.path.isfile(path):
        raise ReIDError(f'{path} does not exist: --color-by pseudo reads the pseudo-labels an '
                        'unsupervised run saves there (give --state FILE), or use --color-by '
                        'cluster to cluster the features now')
    labels = load_training_state(path).get('extra', {}).get('pseudo_labels')
    if labels is None:
        raise ReIDError(f'{path} holds no pseudo-labels (not an unsupervised PCL run)')
    if len(labels) != count:
        raise ReIDError(f'{path} holds pseudo-labels of {len(labels)} training images; the '
                        f'train split has {count}')
    return labels.numpy()


def main():
    parser = make_parser('Draw a 2-D map (t-SNE / UMAP) of the features of some identities')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--features', help='an .npz of tools/extract_features.py')
    source.add_argument('--split', choices=SPLITS, help="a split of the config's dataset")
    parser.add_argument('--ids', type=int, default=10, help='identities (or clusters) drawn')
    parser.add_argument('--color-by', choices=COLOURINGS, default='identity')
    parser.add_argument('--state', default='', help='training state with pseudo-labels')
    parser.add_argument('--method', choices=METHODS, default='auto')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--output', required=True, help='the PNG to write')
    args = parse_args('', parser=parser)
    if args.ids < 1:
        raise ReIDError(f'--ids must be at least 1, not {args.ids}')
    if not args.output.lower().endswith('.png'):
        raise ReIDError(f'--output must name a .png file, not {args.output}')
    logger = setup_logger()
    if args.features:
        gallery = load_gallery(args.features)
        feats, paths, pids, camids = gallery.features, gallery.paths, gallery.pids, gallery.camids
        cfg = load_config(args.config_file, args.opts)
        source = os.path.basename(args.features)
    else:
        feats, images, cfg = split_features(args.config_file, args.opts, args.split)
        paths, pids, camids = images.paths, images.pids, images.camids
        source = f'{cfg.DATASETS.NAMES} {args.split}'
    if args.color_by == 'identity':
        if pids is None:
            raise ReIDError(f'{args.features} holds no identities: colour by --color-by cluster')
        labels, legend = pids, 'identity'
    elif args.color_by == 'pseudo':
        if args.split != 'train':
            raise ReIDError('--color-by pseudo needs --split train: the saved pseudo-labels '
                            'label the training images')
        labels, legend = saved_pseudo_labels(cfg, args.state, len(paths)), 'pseudo-label'
    else:
        from utils.clustering import cluster_features
        c = cfg.CLUSTER
        labels = cluster_features(feats, c.K1, c.K2, c.EPS, c.MIN_SAMPLES, paths=paths)
        legend = 'cluster'
        logger.info('clustered %d images with CLUSTER.K1 %d, K2 %d, EPS %g, MIN_SAMPLES %d: '
                    '%d clusters, %d outliers', len(labels), c.K1, c.K2, c.EPS, c.MIN_SAMPLES,
                    labels.max() + 1, int((labels < 0).sum()))
    rows = pick_labels(labels, args.ids, args.seed)
    coords, method = embed_2d(feats[rows], args.method, args.seed)
    path = plot_embedding(coords, labels[rows], None if camids is None else camids[rows],
                          [paths[i] for i in rows], args.output,
                          title=f'{source}: {method}, {len(rows)} images', legend=legend)
    logger.info('%s map of %d images written to %s (coordinates in %s)', method, len(rows),
                path, os.path.splitext(path)[0] + '.csv')


if __name__ == '__main__':
    cli_main(main)()
