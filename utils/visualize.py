"""Rank-list pictures and CMC plots, drawn with PIL only.

save_rank_lists draws, for each of the first queries, the query image followed by its
top-k gallery images (entries the protocol ignores are skipped), framed green for a true
match and red otherwise, each captioned with its identity and camera. plot_cmc draws one or
more CMC curves on a 0-100% axis. draw_rank_list draws any ranked list (tools/query.py).
"""
import logging
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = (64, 128)  # width, height of one image in a rank list
CAPTION_LINES = 2
MATCH, MISS, QUERY = (40, 170, 60), (210, 50, 50), (60, 90, 200)
NEUTRAL = (150, 150, 150)  # frame of a gallery image whose match is unknown (no labels)
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
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


def _tile(path, colour, captions, font):
    """One framed image with caption lines underneath; grey when the file cannot be read."""
    w, h = TILE
    try:
        with Image.open(path) as img:
            img = img.convert('RGB').resize((w, h))
    except (OSError, TypeError, AttributeError, ValueError):
        img = Image.new('RGB', (w, h), (160, 160, 160))
    canvas = Image.new('RGB', (w + 8, h + 10 + 13 * CAPTION_LINES), 'white')
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, w + 7, h + 7], fill=colour)
    canvas.paste(img, (4, 4))
    for i, line in enumerate(captions[:CAPTION_LINES]):
        draw.text((4, h + 9 + 13 * i), line, fill='black', font=font)
    return canvas


def draw_rank_list(query, gallery, path):
    """Write one rank-list picture: query = (image path, caption lines), gallery = list of
    (image path, frame colour, caption lines) in rank order."""
    font = _font(11)
    tiles = [_tile(query[0], QUERY, query[1], font)]
    tiles += [_tile(image, colour, captions, font) for image, colour, captions in gallery]
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


def save_rank_lists(result, out_dir, num_queries, topk=10):
    """Write <out_dir>/<query index>_<query file>.jpg for the first num_queries queries: each
    image captioned with its identity and camera, gallery images also with rank and distance."""
    if result.distmat is None:
        return []
    q_paths = result.q_paths or [None] * len(result.q_pids)
    g_paths = result.g_paths or [None] * len(result.g_pids)
    written = []
    for q in range(min(num_queries, len(result.q_pids))):
        query = (q_paths[q], ['query', labels(result.q_pids[q], _label_at(result.q_camids, q))])
        gallery = [(g_paths[j], MATCH if result.g_pids[j] == result.q_pids[q] else MISS,
                    [f'{r}: {result.distmat[q, j]:.3f}',
                     labels(result.g_pids[j], _label_at(result.g_camids, j))])
                   for r, j in enumerate(rank_list(result, q, topk), 1)]
        name = os.path.splitext(os.path.basename(q_paths[q] or 'query'))[0]
        written.append(draw_rank_list(query, gallery, os.path.join(out_dir, f'{q:05d}_{name}.jpg')))
    return written


def save_evaluation_pictures(result, out_dir, num_queries, caption=''):
    """Rank lists of the first num_queries queries (out_dir/rank_lists) and the CMC plot
    (out_dir/cmc.png, titled with `caption`, mAP and Rank-1); logs where they went."""
    lists = save_rank_lists(result, os.path.join(out_dir, 'rank_lists'), num_queries)
    title = ' | '.join(part for part in (caption, f'{result.protocol} protocol') if part)
    plot = plot_cmc({f'mAP {100 * result.mAP:.1f}%, Rank-1 {100 * result.cmc[0]:.1f}%':
                     result.cmc}, os.path.join(out_dir, 'cmc.png'), title=title)
    if lists:
        logger.info('rank lists of %d queries written to %s', len(lists), os.path.dirname(lists[0]))
    logger.info('CMC plot written to %s', plot)
    return lists, plot


def plot_cmc(curves, path, title='CMC', size=(640, 440)):
    """Draw CMC curve(s) on a 0-100% axis: an array of fractions (legend: its Rank-1), or a
    dict legend label -> array."""
    if not isinstance(curves, dict):
        curves = {f'Rank-1 {100 * float(np.asarray(curves)[0]):.1f}%': curves}
    curves = {k: np.asarray(v, dtype=float) for k, v in curves.items()}
    w, h = size
    left, right, top, bottom = 60, 20, 36, 50
    img = Image.new('RGB', size, 'white')
    draw = ImageDraw.Draw(img)
    font = _font(13)
    ranks = max(len(c) for c in curves.values())

    def xy(rank, value):
        x = left + (rank - 1) / max(ranks - 1, 1) * (w - left - right)
        return x, top + (1 - value) * (h - top - bottom)

    for i in range(11):  # horizontal grid and y labels
        y = xy(1, i / 10)[1]
        draw.line([left, y, w - right, y], fill=(225, 225, 225))
        draw.text((8, y - 6), f'{10 * i}%', fill='black', font=font)
    for r in sorted({1, *range(5, ranks + 1, 5)}):
        x = xy(r, 0)[0]
        draw.line([x, h - bottom, x, h - bottom + 4], fill='black')
        draw.text((x - 6, h - bottom + 8), str(r), fill='black', font=font)
    draw.rectangle([left, top, w - right, h - bottom], outline='black')
    draw.text((left, 10), title, fill='black', font=font)
    draw.text((w // 2 - 15, h - 20), 'rank', fill='black', font=font)
    for i, (label, cmc) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        draw.line([xy(r + 1, v) for r, v in enumerate(cmc)] if len(cmc) > 1 else [xy(1, cmc[0])] * 2,
                  fill=colour, width=2)
        y = h - bottom - 16 * (len(curves) - i) - 4  # legend at the lower right, below the curves
        draw.text((w - right - 8 - font.getlength(label), y), label, fill=colour, font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path
