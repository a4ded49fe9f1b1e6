"""Procedural pictures for the demo data: persons, vehicles and animals.

`make_identity` draws the stable look of one identity (colours, texture pattern, accessory,
proportions); `make_camera` draws a camera's look (lighting gain, brightness, background
palette, framing). `render` combines them with per-shot jitter (scale, position), background
clutter and, sometimes, a partial occlusion. Everything is driven by a numpy Generator, so
the same seeds give the same pictures.
"""
import colorsys

import numpy as np
from PIL import Image, ImageDraw

PATTERNS = ('plain', 'hstripes', 'vstripes', 'checks', 'dots')
ACCESSORIES = ('none', 'hat', 'bag', 'backpack', 'scarf')


def _colour(rng, sat=(0.55, 1.0), val=(0.35, 1.0)):
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return tuple(int(255 * c) for c in rgb)


def make_identity(rng):
    """The look of one identity; the same dict renders the same object in every shot."""
    return {'main': _colour(rng), 'second': _colour(rng), 'pattern': PATTERNS[rng.integers(5)],
            'pattern_colour': _colour(rng), 'accessory': ACCESSORIES[rng.integers(5)],
            'accessory_colour': _colour(rng), 'skin': _colour(rng, (0.2, 0.5), (0.4, 0.9)),
            'width': rng.uniform(0.8, 1.15), 'height': rng.uniform(0.85, 1.0),
            'stripes': int(rng.integers(3, 7))}


def make_camera(rng):
    """A camera's look: colour gain and brightness (lighting), background, framing."""
    return {'gain': rng.uniform(0.8, 1.2, size=3), 'brightness': rng.uniform(0.8, 1.15),
            'background': [_colour(rng, (0.05, 0.35), (0.25, 0.8)) for _ in range(4)],
            'scale': rng.uniform(0.82, 0.98), 'shift': rng.uniform(-0.08, 0.08)}


def _pattern(draw, box, ident):
    x0, y0, x1, y1 = (int(v) for v in box)
    draw.rectangle((x0, y0, x1, y1), fill=ident['main'])
    kind, colour, n = ident['pattern'], ident['pattern_colour'], ident['stripes']
    w, h = max(x1 - x0, 1), max(y1 - y0, 1)
    if kind in ('hstripes', 'checks'):
        for i in range(0, n, 2):
            draw.rectangle((x0, y0 + h * i // n, x1, y0 + h * (i + 1) // n), fill=colour)
    if kind in ('vstripes', 'checks'):
        for i in range(1 if kind == 'checks' else 0, n, 2):
            draw.rectangle((x0 + w * i // n, y0, x0 + w * (i + 1) // n, y1), fill=colour)
    if kind == 'dots':
        r = max(1, min(w, h) // 10)
        for i in range(1, 4):
            for j in range(1, 3):
                cx, cy = x0 + w * j // 3, y0 + h * i // 4
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)


def _person(draw, ident, cx, top, unit, view):
    """A standing person of height 8 units, feet at top + 8 * unit."""
    u, half = unit, unit * ident['width']
    draw.ellipse((cx - 0.8 * u, top, cx + 0.8 * u, top + 1.6 * u), fill=ident['skin'])
    if ident['accessory'] == 'hat':
        draw.rectangle((cx - u, top - 0.2 * u, cx + u, top + 0.5 * u), fill=ident['accessory_colour'])
    if ident['accessory'] == 'backpack' and view:
        draw.rectangle((cx - 1.6 * half, top + 1.9 * u, cx + 1.6 * half, top + 4.2 * u),
                       fill=ident['accessory_colour'])
    draw.rectangle((cx - 1.9 * half, top + 1.9 * u, cx - 1.3 * half, top + 4.6 * u), fill=ident['main'])
    draw.rectangle((cx + 1.3 * half, top + 1.9 * u, cx + 1.9 * half, top + 4.6 * u), fill=ident['main'])
    _pattern(draw, (cx - 1.3 * half, top + 1.7 * u, cx + 1.3 * half, top + 4.8 * u), ident)
    if ident['accessory'] == 'scarf':
        draw.rectangle((cx - 1.1 * half, top + 1.6 * u, cx + 1.1 * half, top + 2.2 * u),
                       fill=ident['accessory_colour'])
    draw.rectangle((cx - 1.2 * half, top + 4.8 * u, cx - 0.1 * half, top + 8 * u), fill=ident['second'])
    draw.rectangle((cx + 0.1 * half, top + 4.8 * u, cx + 1.2 * half, top + 8 * u), fill=ident['second'])
    if ident['accessory'] == 'bag':
        side = 1 if view % 2 else -1
        x = cx + side * 2.2 * half
        draw.rectangle((min(x, x + side * 1.2 * u), top + 3.8 * u, max(x, x + side * 1.2 * u),
                        top + 5.4 * u), fill=ident['accessory_colour'])


def _vehicle(draw, ident, cx, top, unit, view):
    """A car seen from the side (odd views) or the front/back (even views)."""
    length = (3.8 if view % 2 else 2.4) * unit * ident['width']
    body_top, body_bottom = top + 3.5 * unit, top + 6.6 * unit
    _pattern(draw, (cx - length, body_top, cx + length, body_bottom), ident)
    cabin = length * (0.6 if view % 2 else 0.8)
    offset = (0.4 if view in (1, 3) else -0.4 if view in (5, 7) else 0) * unit
    draw.polygon([(cx - cabin + offset, body_top), (cx - 0.7 * cabin + offset, top + 1.5 * unit),
                  (cx + 0.7 * cabin + offset, top + 1.5 * unit), (cx + cabin + offset, body_top)],
                 fill=ident['second'])
    draw.rectangle((cx - 0.6 * cabin + offset, top + 2 * unit, cx + 0.6 * cabin + offset,
                    top + 3.2 * unit), fill=(40, 50, 70))
    for wx in ((-0.65, 0.65) if view % 2 else (-0.8, 0.8)):
        x = cx + wx * length
        draw.ellipse((x - 0.9 * unit, top + 5.9 * unit, x + 0.9 * unit, top + 7.7 * unit),
                     fill=(20, 20, 20))
    if ident['accessory'] != 'none':  # roof box / decal
        draw.rectangle((cx - 0.5 * cabin, top + 1.0 * unit, cx + 0.5 * cabin, top + 1.5 * unit),
                       fill=ident['accessory_colour'])


def _animal(draw, ident, cx, top, unit, view):
    """A four-legged animal with an identity-specific coat pattern."""
    length = 3.4 * unit * ident['width']
    side = 1 if view % 2 else -1
    for lx in (-0.8, -0.5, 0.5, 0.8):
        x = cx + lx * length
        draw.rectangle((x - 0.35 * unit, top + 4.5 * unit, x + 0.35 * unit, top + 8 * unit),
                       fill=ident['second'])
    _pattern(draw, (cx - length, top + 2.2 * unit, cx + length, top + 5.2 * unit), ident)
    hx = cx + side * (length + 0.6 * unit)
    draw.ellipse((hx - 1.2 * unit, top + 0.8 * unit, hx + 1.2 * unit, top + 3.4 * unit),
                 fill=ident['main'])
    draw.ellipse((hx - 0.4 * unit, top + 1.2 * unit, hx + 0.1 * unit, top + 1.7 * unit),
                 fill=ident['accessory_colour'])
    tx = cx - side * length
    draw.line((tx, top + 2.6 * unit, tx - side * 1.4 * unit, top + 1.2 * unit),
              fill=ident['pattern_colour'], width=max(1, int(0.4 * unit)))


DRAWERS = {'person': _person, 'vehicle': _vehicle, 'animal': _animal}


def render(kind, ident, camera, rng, size=(128, 64), view=0, occlusion=0.25):
    """One shot (PIL RGB image of size (h, w)) of `ident` through `camera`.

    ident None draws background clutter only (a distractor)."""
    h, w = size
    bg = camera['background']
    img = Image.new('RGB', (w, h), bg[0])
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, int(h * rng.uniform(0.55, 0.75)), w, h), fill=bg[1])
    for _ in range(int(rng.integers(2, 6))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        rw, rh = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * h
        draw.rectangle((x, y, x + rw, y + rh), fill=bg[2 + int(rng.integers(2))])
    if ident is not None:
        unit = min(h / 9.0, w / 9.0 if kind != 'person' else w / 4.5)
        unit *= camera['scale'] * rng.uniform(0.92, 1.05) * ident['height']
        cx = w * (0.5 + camera['shift'] + rng.uniform(-0.05, 0.05))
        top = h - 8.4 * unit - rng.uniform(0, 0.4) * unit
        DRAWERS[kind](draw, ident, cx, top, unit, view)
    if rng.random() < occlusion:  # an object in front of the lower or a side part
        colour = bg[2 + int(rng.integers(2))]
        if rng.random() < 0.5:
            draw.rectangle((0, h * rng.uniform(0.65, 0.85), w, h), fill=colour)
        else:
            edge = w * rng.uniform(0.2, 0.4)
            box = (w - edge, 0, w, h) if rng.random() < 0.5 else (0, 0, edge, h)
            draw.rectangle(box, fill=colour)
    pixels = np.asarray(img, dtype=np.float32)
    light = camera['gain'] * camera['brightness'] * rng.uniform(0.9, 1.1)
    pixels = pixels * light + rng.normal(0, 6, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
