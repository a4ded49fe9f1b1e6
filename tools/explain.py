"""What drives a match: each query and its top-k gallery images with heat maps over them.

    python tools/explain.py --config_file output/run/config.yaml --query person.jpg \
        --gallery DIR_OR_LIST_OR_NPZ --topk 5 --output OUT_DIR [--save-maps] \
        TEST.WEIGHT output/run/ViT-B-16_60.pth

Queries and gallery are read and searched as tools/query.py does (images, folders or list
files; a gallery folder, list file or .npz of tools/extract_features.py; the query image is
never its own match). For each query it writes OUT_DIR/<n>_<query file>.jpg: the query and
its top-k matches, each with its heat map over it (processor.heatmaps: Grad-CAM of the
query-gallery distance; ViT: the patch tokens entering the last block, ResNet: the last
stage), captioned with rank and distance, and identity and camera when known. A frame is
green / red when both identities are known (match / not), grey otherwise. --save-maps also
writes OUT_DIR/<n>_<query file>_maps.npz: one float32 array per image, at the image's own
size, keyed by the image's path (the query's and its top-k's).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from processor.heatmaps import HeatMapper  # noqa: E402
from query import label, ranked_search, search_parser  # noqa: E402
from utils.atomic import atomic_write  # noqa: E402
from utils.errors import cli_main  # noqa: E402
from utils.visualize import MATCH, MISS, NEUTRAL, draw_rank_list, labels  # noqa: E402


def frame(q_pid, g_pid):
    return NEUTRAL if q_pid is None or g_pid is None else MATCH if g_pid == q_pid else MISS


def save_maps(path, image_paths, heats):
    with atomic_write(path) as f:
        np.savez(f, **{str(p): h for p, h in zip(image_paths, heats)})
    return path


def main():
    parser = search_parser('Heat maps of what drives the matches of query images', topk=5)
    parser.add_argument('--output', required=True, help='folder for the pictures')
    parser.add_argument('--save-maps', action='store_true',
                        help='also write the raw heat maps (.npz per query)')
    args, extractor, queries, gallery, ranked, logger = ranked_search(parser)
    mapper = HeatMapper(extractor.model, extractor.cfg, extractor.device)
    os.makedirs(args.output, exist_ok=True)
    for q, path in enumerate(queries.paths):
        shown = ranked[q]
        g_paths = [gallery.paths[j] for _, _, j in shown]
        g_cams = None if gallery.camids is None else gallery.camids[[j for _, _, j in shown]]
        heats = mapper(path, g_paths, label(queries.camids, q), g_cams)
        q_pid = label(queries.pids, q)
        tiles = [(gallery.paths[j], frame(q_pid, label(gallery.pids, j)),
                  [f'{r}: {d:.3f}', labels(label(gallery.pids, j), label(gallery.camids, j))])
                 for r, d, j in shown]
        name = f'{q:03d}_{os.path.splitext(os.path.basename(path))[0]}'
        picture = draw_rank_list((path, ['query', labels(q_pid, label(queries.camids, q))]),
                                 tiles, os.path.join(args.output, f'{name}.jpg'), heats)
        print(f'query {q + 1}/{len(queries)}: {path} -> {picture}')
        if args.save_maps:
            save_maps(os.path.join(args.output, f'{name}_maps.npz'), [path, *g_paths], heats)
    logger.info('heat maps of %d queries written to %s', len(queries), args.output)


if __name__ == '__main__':
    cli_main(main)()
