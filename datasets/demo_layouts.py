"""Writers of the demo data in each dataset's on-disk layout (see datasets/demo_data.py).

Each writer gets the target folder, the rendered shots of one layout and a Generator (for
junk/distractor pictures) and returns the counts per split of what it wrote, measured as the
matching loader reports them: {'train': {'ids', 'images', 'cams'}, 'query': ..., ...}.
"""
import json
import os
import os.path as osp
from collections import defaultdict

from .demo_render import render


class Tally:
    """Identities, images and cameras written per split."""

    def __init__(self):
        self.pids, self.cams, self.images = defaultdict(set), defaultdict(set), defaultdict(int)

    def add(self, split, pid, camid):
        self.pids[split].add(pid)
        self.cams[split].add(camid)
        self.images[split] += 1

    def counts(self, **extra):
        out = {s: {'ids': len(self.pids[s]), 'images': self.images[s], 'cams': len(self.cams[s])}
               for s in self.images}
        return {**out, **extra}


def _save(image, path):
    os.makedirs(osp.dirname(path), exist_ok=True)
    image.save(path, quality=92)


def _pid(shot, train_base, test_base, step=2):
    """Dataset pid of a shot: sparse numbering so that tests see train pids relabelled."""
    return (train_base if shot.split == 'train' else test_base) + step * shot.index


def write_market_like(out, shots, rng, style, junk=3, distractors=4):
    """Market-1501 (style 'market') or DukeMTMC-reID (style 'duke') folders, junk -1 and
    distractor 0000 pictures included in bounding_box_test."""
    folders = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}

    def name(pid, cam, frame, k):
        pid = '-1' if pid == -1 else f'{pid:04d}'  # junk is written '-1_c1s1_...' as in Market
        if style == 'market':
            return f'{pid}_c{cam + 1}s1_{frame:06d}_{k + 1:02d}.jpg'
        return f'{pid}_c{cam + 1}_f{frame:07d}.jpg'

    tally = Tally()
    for shot in shots:
        pid = _pid(shot, 1, 2)
        _save(shot.image, osp.join(out, folders[shot.split], name(pid, shot.cam, shot.frame, shot.k)))
        tally.add(shot.split, pid, shot.cam)
    frame = max(s.frame for s in shots) + 1
    for i in range(junk + distractors):
        base = shots[int(rng.integers(len(shots)))]
        ident = base.ident if i < junk else None
        image = render(base.kind, ident, base.camera, rng, base.image.size[::-1], occlusion=1.0)
        pid = -1 if i < junk else 0
        _save(image, osp.join(out, 'bounding_box_test', name(pid, base.cam, frame + i, 0)))
    return tally.counts(junk=junk, distractors=distractors)


def write_cuhk03_np(out, shots, rng):
    """CUHK03-NP (Zhong et al.'s new protocol): labeled/ and detected/, each with
    bounding_box_train, query and bounding_box_test of '<pid>_c<cam>_<n>.png' pictures (two
    cameras: a shot's camera c is written as c1 for even c and c2 for odd c; n counts the
    pictures of that identity and camera from 1). detected/ holds the same shots in looser
    boxes (the picture shifted by a few pixels), as DPM boxes are looser than hand-drawn ones.
    Counts are labeled's, plus 'detected' with its own."""
    folders = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}
    tallies, seen = {'labeled': Tally(), 'detected': Tally()}, defaultdict(int)
    for shot in shots:
        pid, cam = _pid(shot, 1, 1001, step=1), shot.cam % 2
        seen[pid, cam] += 1
        name = f'{pid:04d}_c{cam + 1}_{seen[pid, cam]}.png'
        w, h = shot.image.size
        dx, dy = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        loose = shot.image.crop((-dx, -dy, w - dx, h - dy))
        for variant, image in (('labeled', shot.image), ('detected', loose)):
            _save(image, osp.join(out, variant, folders[shot.split], name))
            tallies[variant].add(shot.split, pid, cam)
    return tallies['labeled'].counts(detected=tallies['detected'].counts())


def write_msmt17(out, shots, rng):
    """MSMT17_V1: train/ and test/ folders plus the four list files; one image per train
    identity goes to list_val.txt."""
    lists, tally = defaultdict(list), Tally()
    last_k = max(s.k for s in shots)
    for shot in shots:
        pid = shot.index
        rel = (f'{pid:04d}/{pid:04d}_{shot.frame % 1000:03d}_{shot.cam + 1:02d}_0303morning_'
               f'{shot.frame:04d}_0.jpg')
        folder = 'train' if shot.split == 'train' else 'test'
        _save(shot.image, osp.join(out, folder, rel))
        if shot.split == 'train':
            lists['val' if shot.cam == 0 and shot.k == last_k else 'train'].append(f'{rel} {pid}')
        else:
            lists[shot.split].append(f'{rel} {pid}')
        tally.add(shot.split, pid, shot.cam)
    for name in ('train', 'val', 'query', 'gallery'):
        with open(osp.join(out, f'list_{name}.txt'), 'w') as f:
            f.write('\n'.join(lists[name]) + '\n')
    return tally.counts(val=len(lists['val']))


def write_veri(out, shots, rng):
    """VeRi-776 folders plus keypoint_train.txt / keypoint_test.txt viewpoint files
    (40 keypoint coordinates, -1 here, then the viewpoint id)."""
    folders = {'train': 'image_train', 'query': 'image_query', 'gallery': 'image_test'}
    n_train = 1 + max(s.index for s in shots if s.split == 'train')
    keypoints, tally, views = defaultdict(list), Tally(), set()
    for shot in shots:
        pid = _pid(shot, 1, 1 + n_train, step=1)
        name = f'{pid:04d}_c{shot.cam + 1:03d}_{shot.frame:08d}_0.jpg'
        _save(shot.image, osp.join(out, folders[shot.split], name))
        kind = 'train' if shot.split == 'train' else 'test'
        coords = ' '.join(['-1'] * 40)
        keypoints[kind].append(f'{folders[shot.split]}/{name} {coords} {shot.view}')
        tally.add(shot.split, pid, shot.cam)
        if shot.split == 'train':
            views.add(shot.view)
    for kind, lines in keypoints.items():
        with open(osp.join(out, f'keypoint_{kind}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return tally.counts(train_views=len(views))


def write_vehicleid(out, shots, rng):
    """VehicleID_V1.0: image/ plus train_test_split/ lists; the test identities are nested
    into test_list_800 (first third) within 1600 (two thirds) within 2400 (all). Counts are
    under 'train' and 'test_800' / 'test_1600' / 'test_2400'."""
    lines, tally = defaultdict(list), Tally()
    n_test = 1 + max(s.index for s in shots if s.split != 'train')
    for n, shot in enumerate(shots):
        name = f'{n:07d}'
        _save(shot.image, osp.join(out, 'image', name + '.jpg'))
        pid = _pid(shot, 5, 7, step=3)
        if shot.split == 'train':
            lines['train_list'].append(f'{name} {pid}')
            tally.add('train', pid, 0)
            continue
        for j, size in enumerate((800, 1600, 2400), 1):
            if shot.index < -(-n_test * j // 3):  # ceil
                lines[f'test_list_{size}'].append(f'{name} {pid}')
                tally.add(f'test_{size}', pid, 0)
    os.makedirs(osp.join(out, 'train_test_split'))
    for name, rows in lines.items():
        with open(osp.join(out, 'train_test_split', name + '.txt'), 'w') as f:
            f.write('\n'.join(rows) + '\n')
    return tally.counts()


def write_animals(out, shots, rng, species):
    """Chloe-Yu/CLIP-ReID's list layout under `out` (use it as DATASETS.ROOT_DIR):
    Animal-Seg-V3/<species>/... (DATA_DIR), <species>_test/ (TEST_ROOT_DIR) and
    datalist/<species>_{train,probe,gallery}.txt; tiger writes datalist/tiger_test.txt
    (every test image, names <imgid>.jpg) and datalist/tiger_gt_test_plain.json in the
    ATRW plain-track annotation format."""
    lists, tally, annotation = defaultdict(list), Tally(), []
    tiger = species == 'tiger'
    for n, shot in enumerate(shots):
        label, side = shot.index, 'left' if shot.view % 2 else 'right'  # extra column, ignored
        if shot.split == 'train':
            rel = f'{species}/{label:03d}_{n:04d}.jpg'
            _save(shot.image, osp.join(out, 'Animal-Seg-V3', rel))
            lists['train'].append(f'{rel} {label}.0 {side}')
            tally.add('train', label, 0)
            continue
        rel = f'{n:06d}.jpg' if tiger else f'{label:03d}_{n:04d}.jpg'
        _save(shot.image, osp.join(out, f'{species}_test', rel))
        if tiger:
            lists['test'].append(f'{rel} {label}')
            tally.add('query', label, 0)
            query = ('sing' if shot.cam == 0 else 'multi') if shot.split == 'query' else ''
            annotation.append({'imgid': n, 'query': query, 'frame': [shot.cam, 0, shot.frame * 10],
                               'entityid': label})
            continue
        lists['gallery'].append(f'{rel} {label}.0 {side}')
        tally.add('gallery', label, 0)
        if shot.split == 'query':
            lists['probe'].append(f'{rel} {label}.0 {side}')
            tally.add('query', label, 0)
    os.makedirs(osp.join(out, 'datalist'), exist_ok=True)
    for name, rows in lists.items():
        with open(osp.join(out, 'datalist', f'{species}_{name}.txt'), 'w') as f:
            f.write('\n'.join(rows) + '\n')
    if tiger:
        with open(osp.join(out, 'datalist', 'tiger_gt_test_plain.json'), 'w') as f:
            json.dump(annotation, f)
    return tally.counts()


def write_custom(out, shots, rng):
    """The generic list format of datasets/custom.py: images/ plus train.txt, query.txt,
    gallery.txt with '<path> <pid> <camid>' lines."""
    lists, tally = defaultdict(list), Tally()
    for shot in shots:
        pid = _pid(shot, 100, 1000, step=7)
        rel = f'images/{shot.split}/{pid}_{shot.cam}_{shot.frame}.jpg'
        _save(shot.image, osp.join(out, rel))
        lists[shot.split].append(f'{rel} {pid} {shot.cam}')
        tally.add(shot.split, pid, shot.cam)
    for split, rows in lists.items():
        with open(osp.join(out, f'{split}.txt'), 'w') as f:
            f.write('\n'.join(rows) + '\n')
    return tally.counts()
