"""Search images against a gallery with a trained model; no labels needed.

    python tools/query.py --config_file output/run/config.yaml --query person.jpg \
        --gallery DIR_OR_NPZ --topk 10 --output OUT_DIR TEST.WEIGHT output/run/ViT-B-16_60.pth

--query takes images, folders or list files; --gallery a folder, a list file, or an .npz of
tools/extract_features.py made with the same model (much faster for a large gallery).
Prints each query's top-k gallery images with their distances (TEST.DISTANCE, as the test
scripts measure them) and, with --output, draws one rank-list picture per query there and
writes ranking.csv. The query image itself is never listed as its own match. Identities
and cameras are shown when the lists or the .npz carry them.
"""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from config import is_config_key, make_parser, parse_args  # noqa: E402
from datasets.image_lists import ImageList, read_images  # noqa: E402
from processor import FeatureExtractor  # noqa: E402
from processor.gallery import Gallery, load_gallery, search  # noqa: E402
from utils.errors import ReIDError, cli_main  # noqa: E402
from utils.memory import budget_bytes  # noqa: E402
from utils.logger import setup_logger  # noqa: E402
from utils.visualize import MATCH, MISS, NEUTRAL, draw_rank_list, labels  # noqa: E402


def read_queries(sources):
    parts = [read_images(s) for s in sources]
    known = {name: all(getattr(p, name) is not None for p in parts) for name in ('pids', 'camids')}
    return ImageList([path for p in parts for path in p.paths],
                     *(np.concatenate([getattr(p, n) for p in parts]) if known[n] else None
                       for n in ('pids', 'camids')))


def make_gallery(source, extractor, logger):
    if source.endswith('.npz'):
        gallery = load_gallery(source)
        if gallery.features.shape[1] != extractor.feature_dim:
            raise ReIDError(f'{source} holds features of size {gallery.features.shape[1]}; the '
                            f'model {extractor.weight} makes features of size '
                            f'{extractor.feature_dim}: the gallery comes from another model')
        if gallery.weight and os.path.abspath(gallery.weight) != os.path.abspath(extractor.weight):
            logger.warning('the gallery features were made with %s, the queries with %s: they '
                           'compare only if both are the same model', gallery.weight,
                           extractor.weight)
        return gallery
    images = read_images(source)
    features = extractor(images.paths, images.camids, images.viewids).numpy()
    return Gallery(features, images.paths, images.pids, images.camids, extractor.weight)


def same_files(query_paths, gallery_paths):
    """(query rows, gallery columns) of the pairs that are one file: never a match."""
    where, rows, cols = {}, [], []
    for j, path in enumerate(gallery_paths):
        where.setdefault(os.path.realpath(path), []).append(j)
    for i, path in enumerate(query_paths):
        for j in where.get(os.path.realpath(path), ()):
            rows.append(i)
            cols.append(j)
    return rows, cols


def label(values, i):
    return None if values is None else values[i]


def search_parser(description, topk):
    """The command line of a search tool: --query, --gallery, --topk (then --output etc.)."""
    parser = make_parser(description)
    parser.add_argument('--query', nargs='+', required=True, help='images, folders or lists')
    parser.add_argument('--gallery', required=True, help='a folder, a list file or an .npz')
    parser.add_argument('--topk', type=int, default=topk, help='gallery images shown per query')
    return parser


def ranked_search(parser):
    """Parse a search tool's command line and search: (args, extractor, queries, gallery,
    ranked, logger), ranked[q] listing query q's top-k as (rank, distance, gallery index);
    a query image is never its own match."""
    args = parse_args('', parser=parser)
    if args.topk < 1:
        raise ReIDError(f'--topk must be at least 1, not {args.topk}')
    keys = [i for i, token in enumerate(args.query) if is_config_key(token)]
    if keys:  # overrides written right after the query images
        args.query, args.opts = args.query[:keys[0]], args.query[keys[0]:] + args.opts
    logger = setup_logger()
    extractor = FeatureExtractor(args.config_file, None, args.opts)
    queries = read_queries(args.query)
    gallery = make_gallery(args.gallery, extractor, logger)
    q_feats = extractor(queries.paths, queries.camids, queries.viewids).numpy()
    order, dist = search(q_feats, gallery.features, extractor.cfg.TEST.DISTANCE, args.topk,
                         same_files(queries.paths, gallery.paths),
                         memory_budget=budget_bytes(extractor.cfg.TEST.MEMORY_BUDGET))
    ranked = [[(r, d, j) for r, (j, d) in enumerate(zip(order[q], dist[q]), 1) if np.isfinite(d)]
              for q in range(len(queries))]
    return args, extractor, queries, gallery, ranked, logger


def main():
    parser = search_parser('Rank gallery images by their distance to query images', topk=10)
    parser.add_argument('--output', default='', help='folder for rank-list pictures')
    args, extractor, queries, gallery, ranked, logger = ranked_search(parser)
    for q, path in enumerate(queries.paths):
        tags = labels(label(queries.pids, q), label(queries.camids, q))
        print(f'query {q + 1}/{len(queries)}: {path} {tags}'.rstrip())
        print(f'  rank  {extractor.cfg.TEST.DISTANCE + " distance":>20}  gallery image')
        for r, d, j in ranked[q]:
            tags = labels(label(gallery.pids, j), label(gallery.camids, j))
            print(f'  {r:4d}  {d:20.6f}  {gallery.paths[j]} {tags}'.rstrip())
    if args.output:
        write_results(args.output, queries, gallery, ranked, logger)


def write_results(out_dir, queries, gallery, ranked, logger):
    """ranking.csv and one rank-list picture per query; frames are green / red only when
    both the query's and the gallery image's identities are known."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'ranking.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(('query', 'rank', 'distance', 'gallery', 'pid', 'camid'))
        for q, path in enumerate(queries.paths):
            writer.writerows((path, r, f'{d:.6f}', gallery.paths[j], label(gallery.pids, j),
                              label(gallery.camids, j)) for r, d, j in ranked[q])
    for q, path in enumerate(queries.paths):
        q_pid = label(queries.pids, q)
        tiles = []
        for r, d, j in ranked[q]:
            g_pid = label(gallery.pids, j)
            colour = NEUTRAL if q_pid is None or g_pid is None else \
                MATCH if g_pid == q_pid else MISS
            tiles.append((gallery.paths[j], colour,
                          [f'{r}: {d:.3f}', labels(g_pid, label(gallery.camids, j))]))
        name = os.path.splitext(os.path.basename(path))[0]
        draw_rank_list((path, ['query', labels(q_pid, label(queries.camids, q))]), tiles,
                       os.path.join(out_dir, f'{q:03d}_{name}.jpg'))
    logger.info('rank lists of %d queries and ranking.csv written to %s', len(queries), out_dir)


if __name__ == '__main__':
    cli_main(main)()
