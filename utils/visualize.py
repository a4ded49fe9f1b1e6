"""Rank-list pictures and CMC plots, drawn with PIL only.

save_rank_lists draws, for each of the first queries, the query image followed by its
top-k gallery images (entries the protocol ignores are skipped), framed green for a true
match and red otherwise. plot_cmc draws one or more CMC curves.
"""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = (64, 128)  # width, height of one image in a rank list
MATCH, MISS, QUERY = (40, 170, 60), (210, 50, 50), (60, 90, 200)
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _font(size):
    try:
        return ImageFont.load_default(size=size)  # scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _tile(path, colour, caption, font):
    """One framed image with a caption underneath; a grey tile when the file cannot be read."""
    w, h = TILE
    try:
        with Image.open(path) as img:
            img = img.convert('RGB').resize((w, h))
    except (OSError, TypeError, AttributeError, ValueError):
        img = Image.new('RGB', (w, h), (160, 160, 160))
    canvas = Image.new('RGB', (w + 8, h + 22), 'white')
    ImageDraw.Draw(canvas).rectangle([0, 0, w + 7, h + 7], fill=colour)
    canvas.paste(img, (4, 4))
    ImageDraw.Draw(canvas).text((4, h + 9), caption, fill='black', font=font)
    return canvas


def rank_list(result, q, topk=10):
    """Gallery indices of query q's top-k, skipping entries the protocol ignores."""
    dist = np.asarray(result.distmat[q])
    order = np.argsort(dist, kind='stable')
    return order[~result.excluded_mask(q)[order]][:topk]


def save_rank_lists(result, out_dir, num_queries, topk=10):
    """Write <out_dir>/<query index>_<query file>.jpg for the first num_queries queries."""
    if result.distmat is None:
        return []
    os.makedirs(out_dir, exist_ok=True)
    font = _font(11)
    q_paths = result.q_paths or [None] * len(result.q_pids)
    g_paths = result.g_paths or [None] * len(result.g_pids)
    written = []
    for q in range(min(num_queries, len(result.q_pids))):
        tiles = [_tile(q_paths[q], QUERY, f'id {result.q_pids[q]}', font)]
        for r, j in enumerate(rank_list(result, q, topk), 1):
            hit = result.g_pids[j] == result.q_pids[q]
            tiles.append(_tile(g_paths[j], MATCH if hit else MISS, f'{r}: {result.distmat[q, j]:.3f}', font))
        sheet = Image.new('RGB', (sum(t.width for t in tiles) + 12, tiles[0].height), 'white')
        x = 0
        for i, t in enumerate(tiles):
            sheet.paste(t, (x, 0))
            x += t.width + (12 if i == 0 else 0)  # a gap after the query
        name = os.path.splitext(os.path.basename(q_paths[q] or 'query'))[0]
        path = os.path.join(out_dir, f'{q:05d}_{name}.jpg')
        sheet.save(path)
        written.append(path)
    return written


def plot_cmc(curves, path, title='CMC', size=(640, 440)):
    """Draw CMC curve(s) (an array, or a dict label -> array of fractions) to an image file."""
    if not isinstance(curves, dict):
        curves = {'CMC': curves}
    curves = {k: np.asarray(v, dtype=float) for k, v in curves.items()}
    w, h = size
    left, right, top, bottom = 60, 20, 36, 50
    img = Image.new('RGB', size, 'white')
    draw = ImageDraw.Draw(img)
    font = _font(13)
    ranks = max(len(c) for c in curves.values())
    lo = min(float(c.min()) for c in curves.values() if len(c))
    lo = np.floor(lo * 10) / 10 if lo < 1 else 0.9

    def xy(rank, value):
        x = left + (rank - 1) / max(ranks - 1, 1) * (w - left - right)
        return x, top + (1 - (value - lo) / (1 - lo)) * (h - top - bottom)

    for i in range(11):  # horizontal grid and y labels
        v = lo + (1 - lo) * i / 10
        y = xy(1, v)[1]
        draw.line([left, y, w - right, y], fill=(225, 225, 225))
        draw.text((8, y - 6), f'{100 * v:.0f}%', fill='black', font=font)
    for r in sorted({1, *range(5, ranks + 1, 5)}):
        x = xy(r, lo)[0]
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
        draw.text((w - right - 170, y), f'{label}: Rank-1 {100 * cmc[0]:.1f}%', fill=colour, font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path
