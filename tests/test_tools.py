"""Using a trained model: processor.FeatureExtractor and the three tools.

Models are built on a tiny random CLIP with seeded heads (no training needed: the tools must
reproduce whatever the model computes). The reference is the evaluation path itself: the
features test_clipreid.py scores (processor.cli.test_main, its evaluator captured). Each
tool runs once as a user runs it (a subprocess); other cases run the same script in-process
(runpy), which is faster.
"""
import csv
import os
import re
import runpy
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_tensor

from _e2e_helpers import REPO, config_path, demo_root, small_opts, tiny_clip
from config import load_config
from datasets import make_dataloader
from model import make_model
from processor import FeatureExtractor, cli
from processor import evaluation as evaluation_module
from utils.checkpoint import save_weights

# The layouts test_test_scripts.py generates: the session shares one copy.
LAYOUTS = ('market1501', 'msmt17', 'veri', 'vehicleid', 'animals', 'custom')
CASES = {  # name -> (config, CLIP tower, method)
    'clipreid': ('person/vit_clipreid.yml', 'vit', 'clipreid'),
    'pcl': ('pcl/market1501.yml', 'vit', 'pcl'),  # bicubic test resize
    'sie': ('veri/vit_clipreid_sie_olp.yml', 'vit', 'clipreid'),  # SIE camera, stride 12
    'resnet': ('person/cnn_clipreid.yml', 'rn', 'clipreid'),
}
_MADE = {}


def made(tmp_path_factory, name):
    """(config path, opts with TEST.WEIGHT, evaluator of test_main) for a case, made once."""
    if name not in _MADE:
        config, arch, method = CASES[name]
        root = demo_root(tmp_path_factory, LAYOUTS, ids=12)
        out = tmp_path_factory.mktemp(f'tools_{name}')
        # Images are 64 x 32: resizing them to 48 x 32 makes the test transform matter.
        opts = small_opts(root, tiny_clip(tmp_path_factory, arch), out, 'MODEL.METHOD', method,
                          'TEST.IMS_PER_BATCH', 16, 'SOLVER.IMS_PER_BATCH', 8,
                          'SOLVER.STAGE2.IMS_PER_BATCH', 8, 'INPUT.SIZE_TRAIN', '[48, 32]',
                          'INPUT.SIZE_TEST', '[48, 32]')
        cfg = load_config(config_path(config), opts)
        data = make_dataloader(cfg, training=False)
        torch.manual_seed(1)
        model = make_model(cfg, data.num_classes, data.camera_num, data.view_num)
        weight = str(out / 'model.pth')
        save_weights(model, weight)
        opts += ['TEST.WEIGHT', weight]
        _MADE[name] = (config_path(config), opts, evaluation(config_path(config), opts))
    return _MADE[name]


def evaluation(config, opts):
    """The evaluator test_clipreid.py filled: its features, labels and paths, in order."""
    seen = []

    def capture(*args, **kwargs):
        seen.append(cli_make_evaluator(*args, **kwargs))
        return seen[-1]
    cli_make_evaluator = evaluation_module.make_evaluator
    argv = sys.argv
    try:
        evaluation_module.make_evaluator = capture
        sys.argv = ['test_clipreid.py', '--config_file', config, *map(str, opts)]
        cli.test_main('test')
    finally:
        evaluation_module.make_evaluator, sys.argv = cli_make_evaluator, argv
    return seen[0]


def scored(evaluator):
    """(features as scored, i.e. L2-normalised, pids, camids, paths)."""
    return (F.normalize(torch.cat(evaluator.feats).float(), dim=1), torch.cat(evaluator.pids),
            torch.cat(evaluator.camids), list(evaluator.paths))


def run_tool(script, args, in_process=True, capsys=None):
    """Run tools/<script> with args; in-process by runpy (stdout through capsys) or as a
    subprocess. Returns what it printed."""
    argv = [os.path.join(REPO, 'tools', script), *map(str, args)]
    if not in_process:
        env = dict(os.environ, TQDM_DISABLE='1', OMP_NUM_THREADS='1')
        proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout
    saved = sys.argv
    try:
        sys.argv = argv
        runpy.run_path(argv[0], run_name='__main__')
    finally:
        sys.argv = saved
    return capsys.readouterr().out


@pytest.mark.parametrize('name', ['clipreid', 'pcl', 'sie'])
def test_extractor_features_equal_the_test_scripts(tmp_path_factory, name):
    config, opts, evaluator = made(tmp_path_factory, name)
    expected, _, camids, paths = scored(evaluator)
    extractor = FeatureExtractor(config, None, opts)
    feats = extractor(paths, camids=camids)
    assert feats.dtype == torch.float32 and feats.shape == expected.shape
    assert torch.allclose(feats.norm(dim=1), torch.ones(len(feats)))
    assert (feats - expected).abs().max() <= 1e-6
    if name == 'sie':  # without camera labels the SIE embedding is left out, as documented
        assert (extractor(paths[:16]) - expected[:16]).abs().max() > 1e-3


def test_extractor_takes_paths_pil_images_arrays_and_tensors(tmp_path_factory):
    config, opts, evaluator = made(tmp_path_factory, 'clipreid')
    expected, _, _, paths = scored(evaluator)
    extractor = FeatureExtractor(config, opts[-1], opts[:-2])  # weight as an argument
    images = [Image.open(p).convert('RGB') for p in paths[:3]]
    for given in (paths[:3], images, [np.asarray(i) for i in images],
                  [np.asarray(i) / 255.0 for i in images], [pil_to_tensor(i) for i in images],
                  torch.stack([to_tensor(i) for i in images])):
        assert (extractor(given) - expected[:3]).abs().max() <= 1e-6
    assert (extractor(paths[0]) - expected[:1]).abs().max() <= 1e-6  # one image


def test_extract_features_script_writes_features_paths_and_labels(tmp_path_factory, tmp_path):
    """As a user runs it: the gallery split of an SIE model (labels known, so features are
    exactly the scored ones)."""
    config, opts, evaluator = made(tmp_path_factory, 'sie')
    expected, pids, camids, paths = scored(evaluator)
    run_tool('extract_features.py', ['--config_file', config, '--split', 'gallery', '--output',
                                     tmp_path / 'gallery.npz', *opts], in_process=False)
    saved = np.load(tmp_path / 'gallery.npz')
    q = evaluator.num_query
    assert list(saved['paths']) == paths[q:]
    assert saved['features'].dtype == np.float32
    assert np.abs(saved['features'] - expected[q:].numpy()).max() <= 1e-6
    assert (saved['pids'] == pids[q:].numpy()).all()
    assert (saved['camids'] == camids[q:].numpy()).all()


def test_extract_features_of_a_folder_has_no_labels(tmp_path_factory, tmp_path, capsys):
    config, opts, evaluator = made(tmp_path_factory, 'clipreid')
    folder = os.path.dirname(evaluator.paths[0])  # the query folder
    out = run_tool('extract_features.py', ['--config_file', config, '--images', folder,
                                           '--output', tmp_path / 'q', *opts], capsys=capsys)
    saved = np.load(tmp_path / 'q.npz')
    assert 'pids' not in saved.files and 'camids' not in saved.files
    assert list(saved['paths']) == sorted(saved['paths']) and len(saved['paths']) == 12
    expected = FeatureExtractor(config, None, opts)(list(saved['paths']))
    assert np.abs(saved['features'] - expected.numpy()).max() <= 1e-6
    assert f'features of 12 images ({expected.shape[1]} values each) written to ' in out


_ROW = re.compile(r'^\s+(\d+)\s+([\d.]+)\s+(\S+)(?: id (\d+) cam (\d+))?$')


def printed_ranks(out):
    """{query path: [(rank, distance, gallery path, pid or None)]} from query.py's output."""
    ranks, query = {}, None
    for line in out.splitlines():
        if line.startswith('query '):
            query = line.split(': ', 1)[1].split(' id ')[0]
            ranks[query] = []
        elif (m := _ROW.match(line)):
            ranks[query].append((int(m.group(1)), float(m.group(2)), m.group(3),
                                 m.group(4) and int(m.group(4))))
    return ranks


def test_query_script_ranks_an_npz_gallery(tmp_path_factory, tmp_path, capsys):
    """Query images against the .npz of extract_features.py: the printed top-k are the k
    nearest by squared euclidean distance, with the gallery's labels; pictures and
    ranking.csv in --output."""
    config, opts, evaluator = made(tmp_path_factory, 'clipreid')
    feats, pids, _, paths = scored(evaluator)
    q = evaluator.num_query
    run_tool('extract_features.py', ['--config_file', config, '--split', 'gallery', '--output',
                                     tmp_path / 'g.npz', *opts], capsys=capsys)
    out = run_tool('query.py', ['--config_file', config, '--query', *paths[:2], '--gallery',
                                tmp_path / 'g.npz', '--topk', 5, '--output', tmp_path / 'ranks',
                                *opts], in_process=False)
    ranks = printed_ranks(out)
    assert list(ranks) == paths[:2]
    for i, query in enumerate(paths[:2]):
        dist = (feats[q:] - feats[i]).pow(2).sum(1).numpy()
        order = np.argsort(dist, kind='stable')[:5]
        assert [r[0] for r in ranks[query]] == [1, 2, 3, 4, 5]
        assert [r[2] for r in ranks[query]] == [paths[q + j] for j in order]
        assert np.allclose([r[1] for r in ranks[query]], dist[order], atol=2e-6)
        assert [r[3] for r in ranks[query]] == [int(pids[q + j]) for j in order]
    pictures = sorted(os.listdir(tmp_path / 'ranks'))
    assert pictures == ['000_' + os.path.basename(paths[0]), '001_' + os.path.basename(paths[1]),
                        'ranking.csv']
    with open(tmp_path / 'ranks' / 'ranking.csv') as f:
        assert len(list(csv.DictReader(f))) == 10


def test_query_script_on_a_folder_never_matches_the_query_itself(tmp_path_factory, capsys):
    config, opts, evaluator = made(tmp_path_factory, 'clipreid')
    paths = evaluator.paths
    folder = os.path.dirname(paths[0])
    out = run_tool('query.py', ['--config_file', config, '--query', paths[0], *opts,
                                '--gallery', folder, '--topk', 3], capsys=capsys)
    (ranks,) = printed_ranks(out).values()
    assert len(ranks) == 3 and paths[0] not in [r[2] for r in ranks]
    assert all(r[3] is None for r in ranks)  # a folder carries no labels


def onnx_run(path, batch):
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: batch.numpy()})[0]


@pytest.mark.parametrize('name', ['clipreid', 'resnet'], ids=['vit', 'resnet'])
def test_exported_onnx_gives_the_extractor_features(tmp_path_factory, tmp_path, capsys, name):
    """The ViT export as a user runs it, the ResNet one in-process; onnxruntime on normalised
    test images, batches of 1 and 5 (dynamic batch axis)."""
    config, opts, evaluator = made(tmp_path_factory, name)
    expected, _, _, paths = scored(evaluator)
    run_tool('export_onnx.py', ['--config_file', config, '--output', tmp_path / 'm.onnx', *opts],
             in_process=name == 'resnet', capsys=capsys)
    extractor = FeatureExtractor(config, None, opts)
    batch = torch.stack([extractor.transform(Image.open(p).convert('RGB')) for p in paths[:5]])
    assert np.abs(onnx_run(tmp_path / 'm.onnx', batch) - expected[:5].numpy()).max() <= 1e-4
    assert np.abs(onnx_run(tmp_path / 'm.onnx', batch[:1]) - expected[:1].numpy()).max() <= 1e-4
    import onnx
    meta = {p.key: p.value for p in onnx.load(tmp_path / 'm.onnx').metadata_props}
    t = extractor.cfg.INPUT
    assert meta == {'input_size': 'x'.join(map(str, t.SIZE_TEST)), 'resize': 'bilinear',
                    'pixel_mean': ','.join(map(str, t.PIXEL_MEAN)), 'weight': 'model.pth',
                    'pixel_std': ','.join(map(str, t.PIXEL_STD)), 'method': 'clipreid'}


def test_export_names_pcl_s_bicubic_resize():
    from processor.export import preprocessing
    cfg = load_config(config_path('pcl/market1501.yml'), ['MODEL.METHOD', 'pcl'])
    assert preprocessing(cfg)['resize'] == 'bicubic'


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_search_distances_are_the_evaluation_distances(metric):
    """More queries than one distance block: still the very bits evaluation ranks by."""
    from processor.gallery import search
    from utils.metrics import R1_mAP_eval
    gen = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(1100, 8, generator=gen), torch.randn(30, 8, generator=gen)
    evaluator = R1_mAP_eval(len(query), feat_norm='no', distance=metric)
    evaluator.update((torch.cat([query, gallery]), torch.zeros(1130, dtype=torch.long),
                      torch.tensor([0] * 1100 + [1] * 30)))
    distmat = evaluator.compute().distmat
    order, dist = search(query.numpy(), gallery.numpy(), metric, topk=30)
    np.testing.assert_array_equal(dist, np.take_along_axis(distmat, order, axis=1))
    np.testing.assert_array_equal(order, np.argsort(distmat, axis=1, kind='stable'))
