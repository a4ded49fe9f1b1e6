"""Small procedural re-ID datasets in the real on-disk layouts, for the demo and the tests.

Each identity has a stable look (colours, texture pattern, accessory, proportions; see
demo_render.py) and is seen by every camera, with camera-specific lighting, framing, scale
and position jitter, background clutter and partial occlusions. The first half of the
identities (rounded up) trains; the rest is tested: the first image of each of the first
`query_cameras` cameras is a query, every other image is in the gallery, so each query has
matches in other cameras.

    python -m datasets.demo_data --root demo_data [--layouts market1501,msmt17,cuhk03_np,veri,
        vehicleid,animals,custom] [--ids N] [--seed S] [--cameras C] [--per-camera K]

Layouts (folder under root): market1501 (Market-1501-v15.09.15, with junk -1 and distractor
0000 pictures in the gallery), cuhk03_np (cuhk03-np/labeled and cuhk03-np/detected, two
cameras), dukemtmc (dukemtmcreid/DukeMTMC-reID), occ_duke
(dukemtmcreid/Occluded_Duke), msmt17 (MSMT17, V1 lists), veri (VeRi, with viewpoint files),
vehicleid (VehicleID_V1.0), animals (animals: yak and tiger list layouts; use root/animals as
DATASETS.ROOT_DIR) and custom (custom: the list format of datasets/custom.py). A layout whose
folder exists is skipped. The output is a function of the options and the seed only.
"""
import argparse
import logging
import os
import os.path as osp
import shutil
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from utils.errors import ReIDError, cli_main

from . import demo_layouts as L
from .demo_render import make_camera, make_identity, render

logger = logging.getLogger('reid')

LAYOUTS = {  # name -> (folder under root, kind of object, writer)
    'market1501': ('Market-1501-v15.09.15', 'person',
                   lambda out, shots, rng: L.write_market_like(out, shots, rng, 'market')),
    'dukemtmc': ('dukemtmcreid/DukeMTMC-reID', 'person',
                 lambda out, shots, rng: L.write_market_like(out, shots, rng, 'duke', 0, 0)),
    'occ_duke': ('dukemtmcreid/Occluded_Duke', 'person',
                 lambda out, shots, rng: L.write_market_like(out, shots, rng, 'duke', 0, 0)),
    'msmt17': ('MSMT17', 'person', L.write_msmt17),
    'cuhk03_np': ('cuhk03-np', 'person', L.write_cuhk03_np),
    'veri': ('VeRi', 'vehicle', L.write_veri),
    'vehicleid': ('VehicleID_V1.0', 'vehicle', L.write_vehicleid),
    'custom': ('custom', 'person', L.write_custom),
    'animals': ('animals', 'animal', None),  # one sub-layout per species
}


@dataclass(frozen=True)
class DemoSpec:
    ids: int = 24              # identities per layout (half train, half test)
    cameras: int = 4
    per_camera: int = 3        # images per identity per camera
    size: tuple = (128, 64)    # image (height, width)
    seed: int = 0
    query_cameras: int = 2     # test identities: a query picture from each of these cameras


@dataclass
class Shot:
    kind: str
    ident: dict
    camera: dict
    split: str     # 'train', 'query' or 'gallery'
    index: int     # identity index within train, or within test
    cam: int       # 0-based camera
    k: int         # image number within (identity, camera)
    view: int      # viewpoint 0..7 (VeRi labels)
    frame: int     # running number, unique within the layout
    image: Image.Image


def draw_shots(spec, kind, tag):
    """All shots of one layout; `tag` seeds it apart from the other layouts."""
    if spec.ids < 2 or spec.cameras < 2 or spec.per_camera < 1:
        raise ReIDError('demo data needs at least 2 identities, 2 cameras and 1 image per camera')
    rng = np.random.default_rng([spec.seed, zlib.crc32(tag.encode())])
    cameras = [make_camera(rng) for _ in range(spec.cameras)]
    n_train, n_query = (spec.ids + 1) // 2, min(spec.query_cameras, spec.cameras - 1)
    shots = []
    for i in range(spec.ids):
        ident = make_identity(rng)
        for cam in range(spec.cameras):
            for k in range(spec.per_camera):
                split = ('train' if i < n_train else
                         'query' if k == 0 and cam < n_query else 'gallery')
                view = (2 * cam + k) % 8
                image = render(kind, ident, cameras[cam], rng, tuple(spec.size), view)
                shots.append(Shot(kind, ident, cameras[cam], split, i if i < n_train else i - n_train,
                                  cam, k, view, len(shots), image))
    return shots, rng


def _write_atomically(target, write):
    """Write into target + '.partial' and rename, so an interrupted run leaves no half layout."""
    partial = target + '.partial'
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    counts = write(partial)
    os.rename(partial, target)
    return counts


def generate(root, layouts=('market1501',), ids=24, seed=0, cameras=4, per_camera=3,
             size=(128, 64), species=('yak', 'tiger')):
    """Write the requested layouts under root; returns {layout: counts}, where counts is
    {split: {'ids', 'images', 'cams'}} plus layout extras (market1501: 'junk', 'distractors';
    msmt17: 'val'; cuhk03_np: 'detected'; veri: 'train_views'; vehicleid: 'test_800' ...;
    animals: one such dict per species). A layout whose folder already exists is skipped and maps to None."""
    spec = DemoSpec(ids, cameras, per_camera, tuple(size), seed)
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise ReIDError(f'unknown demo layout(s) {", ".join(unknown)}; known: {", ".join(LAYOUTS)}')
    result = {}
    for name in layouts:
        folder, kind, writer = LAYOUTS[name]
        target = osp.join(root, folder)
        if osp.exists(target):
            logger.info('demo data: %s exists, skipped', target)
            result[name] = None
            continue
        os.makedirs(osp.dirname(target), exist_ok=True)
        if name == 'animals':
            result[name] = _write_atomically(target, lambda out: {
                s: L.write_animals(out, *draw_shots(spec, kind, f'animals-{s}'), s)
                for s in species})
        else:
            result[name] = _write_atomically(
                target, lambda out: writer(out, *draw_shots(spec, kind, name)))
        logger.info('demo data: wrote %s', target)
    return result


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description='Write small procedural re-ID datasets.')
    parser.add_argument('--root', default='demo_data', help='output folder')
    parser.add_argument('--layouts', default='market1501',
                        help=f'comma-separated, from: {",".join(LAYOUTS)}')
    parser.add_argument('--ids', type=int, default=24, help='identities per layout')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cameras', type=int, default=4)
    parser.add_argument('--per-camera', type=int, default=3, help='images per identity per camera')
    parser.add_argument('--size', type=int, nargs=2, default=(128, 64), metavar=('H', 'W'))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    result = generate(args.root, [s.strip() for s in args.layouts.split(',') if s.strip()],
                      args.ids, args.seed, args.cameras, args.per_camera, args.size)
    for name, counts in result.items():
        print(f'{name}: {"exists, skipped" if counts is None else counts}')


if __name__ == '__main__':
    main()
