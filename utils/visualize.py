"""Rank-list pictures (PIL) and the evaluation's plots (matplotlib, utils.plots).

save_rank_lists draws, for each of the first queries, the query image followed by its
top-k gallery images (entries the protocol ignores are skipped), framed green for a true
match and red otherwise, each captioned with its identity and camera; with a heat mapper
(TEST.VISUALIZE_HEATMAP, processor.heatmaps) each image carries its heat map. draw_rank_list
draws any ranked list (tools/query.py, tools/explain.py). save_evaluation_pictures adds the
CMC plot and, for a re-ranking sweep, its heat map (utils.plots).
"""
import logging
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .plots import plot_cmc, plot_sweep

TILE = (64, 128)  # width, height of one image in a rank list
CAPTION_LINES = 2
MATCH, MISS, QUERY = (40, 170, 60), (210, 50, 50), (60, 90, 200)
NEUTRAL = (150, 150, 150)  # frame of a gallery image whose match is unknown (no labels)
HEAT_ALPHA = 0.5  # weight of the heat colours over the image
logger = logging.getLogger('reid')


def _font(size):
    try:
        return ImageFont.load_default(size=size)  # scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def labels(pid=None, camid=None):
    """'id 3 cam 1', or what of it is known ('' when neither: unlabelled images)."""
    parts = [f'{name} {int(value)}' for name, value in (('id', pid), ('cam', camid))
             if value is not None and int(value) >= 0]
    return ' '.join(parts)


def overlay(img, heat):
    """img (PIL RGB) with `heat` (2-D array, any size, any scale) in the 'jet' colours over it,
    the map scaled to 0..1 by its maximum (an all-zero map leaves the image as it is)."""
    from matplotlib import colormaps
    heat = np.asarray(heat, dtype=np.float32)
    top = float(heat.max()) if heat.size else 0.0
    if top <= 0:
        return img
    scaled = Image.fromarray(np.uint8(np.clip(heat / top, 0, 1) * 255)).resize(
        img.size, Image.BILINEAR)
    colours = colormaps['jet'](np.asarray(scaled) / 255.0)[..., :3]
    mixed = (1 - HEAT_ALPHA) * np.asarray(img, dtype=np.float32) + HEAT_ALPHA * 255 * colours
    return Image.fromarray(np.uint8(np.clip(mixed, 0, 255)))


def _tile(path, colour, captions, font, heat=None):
    """One framed image with caption lines underneath (its heat map over it when given); grey
    when the file cannot be read."""
    w, h = TILE
    try:
        with Image.open(path) as img:
            img = img.convert('RGB')
            img = (img if heat is None else overlay(img, heat)).resize((w, h))
    except (OSError, TypeError, AttributeError, ValueError):
        img = Image.new('RGB', (w, h), (160, 160, 160))
    canvas = Image.new('RGB', (w + 8, h + 10 + 13 * CAPTION_LINES), 'white')
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, w + 7, h + 7], fill=colour)
    canvas.paste(img, (4, 4))
    for i, line in enumerate(captions[:CAPTION_LINES]):
        draw.text((4, h + 9 + 13 * i), line, fill='black', font=font)
    return canvas


def draw_rank_list(query, gallery, path, heats=None):
    """Write one rank-list picture: query = (image path, caption lines), gallery = list of
    (image path, frame colour, caption lines) in rank order; heats: None, or the heat maps
    (query's first, then the gallery's in rank order) to lay over the images."""
    font = _font(11)
    heats = heats or [None] * (1 + len(gallery))
    tiles = [_tile(query[0], QUERY, query[1], font, heats[0])]
    tiles += [_tile(image, colour, captions, font, heat)
              for (image, colour, captions), heat in zip(gallery, heats[1:])]
    sheet = Image.new('RGB', (sum(t.width for t in tiles) + 12, tiles[0].height), 'white')
    x = 0
    for i, t in enumerate(tiles):
        sheet.paste(t, (x, 0))
        x += t.width + (12 if i == 0 else 0)  # a gap after the query
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path


def rank_list(result, q, topk=10):
    """Gallery indices of query q's top-k, skipping entries the protocol ignores."""
    dist = np.asarray(result.distmat[q])
    order = np.argsort(dist, kind='stable')
    return order[~result.excluded_mask(q)[order]][:topk]


def _label_at(values, i):
    return None if values is None else values[i]


def save_rank_lists(result, out_dir, num_queries, topk=10, heat_mapper=None):
    """Write <out_dir>/<query index>_<query file>.jpg for the first num_queries queries: each
    image captioned with its identity and camera, gallery images also with rank and distance;
    heat_mapper(query path, gallery paths, query camid, gallery camids) -> heat maps (query's
    first) lays them over the images."""
    if result.distmat is None:
        return []
    q_paths = result.q_paths or [None] * len(result.q_pids)
    g_paths = result.g_paths or [None] * len(result.g_pids)
    written = []
    for q in range(min(num_queries, len(result.q_pids))):
        query = (q_paths[q], ['query', labels(result.q_pids[q], _label_at(result.q_camids, q))])
        shown = rank_list(result, q, topk)
        gallery = [(g_paths[j], MATCH if result.g_pids[j] == result.q_pids[q] else MISS,
                    [f'{r}: {result.distmat[q, j]:.3f}',
                     labels(result.g_pids[j], _label_at(result.g_camids, j))])
                   for r, j in enumerate(shown, 1)]
        heats = None
        if heat_mapper is not None and q_paths[q] is not None:
            heats = heat_mapper(q_paths[q], [g_paths[j] for j in shown],
                                _label_at(result.q_camids, q),
                                None if result.g_camids is None else result.g_camids[shown])
        name = os.path.splitext(os.path.basename(q_paths[q] or 'query'))[0]
        written.append(draw_rank_list(query, gallery, os.path.join(out_dir, f'{q:05d}_{name}.jpg'),
                                      heats))
    return written


def save_evaluation_pictures(result, out_dir, num_queries, caption='', heat_mapper=None):
    """Rank lists of the first num_queries queries (out_dir/rank_lists, with heat maps when
    heat_mapper is given), the CMC plot (out_dir/cmc.png and its numbers cmc.csv, titled with
    `caption`, mAP and Rank-1) and, for a re-ranking sweep, its mAP heat map (sweep.png,
    sweep.csv); logs where they went."""
    lists = save_rank_lists(result, os.path.join(out_dir, 'rank_lists'), num_queries,
                            heat_mapper=heat_mapper)
    title = ' | '.join(part for part in (caption, f'{result.protocol} protocol') if part)
    plot = plot_cmc({f'mAP {100 * result.mAP:.1f}%, Rank-1 {100 * result.cmc[0]:.1f}%':
                     result.cmc}, os.path.join(out_dir, 'cmc.png'), title=title)
    if lists:
        logger.info('rank lists of %d queries written to %s', len(lists), os.path.dirname(lists[0]))
    logger.info('CMC plot written to %s', plot)
    if result.extra.get('rerank_sweep'):
        metric = 'mAP' if 'mAP' in result.extra['rerank_sweep'][0] else \
            [k for k in result.extra['rerank_sweep'][0] if k not in ('k1', 'k2', 'lambda')][0]
        logger.info('re-ranking sweep plot written to %s', plot_sweep(
            result.extra['rerank_sweep'], os.path.join(out_dir, 'sweep.png'), metric, title))
    return lists, plot
