"""What a newcomer meets after the README's first commands, through the real scripts.

One short PCL run (train_pcl.py, 2 epochs while CHECKPOINT_PERIOD and EVAL_PERIOD are 5)
must still save and evaluate its last epoch, write its config, metrics.csv and TensorBoard
curves, keep the screen quiet, and refuse to be overwritten; `--resume` written after the
overrides continues it; test_clipreid.py takes its config.yaml. The remaining errors and
pictures are checked in-process on the scripts' own functions.
"""
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from _e2e_helpers import demo_root, logged_results, read_log, small_opts, tiny_clip
from _run_helpers import NAME, run_ok, tiny_run, train_opts  # noqa: F401
from config import load_config, parse_args
from datasets import make_dataloader
from model import make_model
from model.checkpoint import load_into
from model.tiny_clip import save_tiny_clip
from processor import cli
from utils.checkpoint import save_weights
from utils.errors import ReIDError
from utils.training_log import read_metrics
from utils.plots import read_cmc_csv
from utils.visualize import plot_cmc

CPUS = len(os.sched_getaffinity(0))


def opts(tiny, out, *extra):
    """2 epochs of 4 iterations, checkpoints and evaluation every 5 epochs, more loader
    workers than CPUs, the demo's device choice."""
    return train_opts(tiny, out, 'SOLVER.CHECKPOINT_PERIOD', 5, 'SOLVER.EVAL_PERIOD', 5,
                      'SOLVER.LOG_PERIOD', 3, 'DATALOADER.NUM_WORKERS', CPUS + 1,
                      'MODEL.DEVICE', 'auto', *extra)


@pytest.fixture(scope='module')
def run(tmp_path_factory, tiny_run):
    out = tmp_path_factory.mktemp('newcomer') / 'out'
    proc = run_ok('train_pcl.py', opts(tiny_run, out))
    return out, proc


def test_the_last_epoch_is_saved_and_evaluated_whatever_the_periods(run):
    out, proc = run
    assert os.path.exists(out / f'{NAME}_2.pth') and not os.path.exists(out / f'{NAME}_1.pth')
    log = read_log(out)
    assert len(logged_results(log)) == 1
    assert log.index('pcl epoch 2 done') < log.index('Validation results')


def test_the_screen_stays_quiet(run):
    """No config dump (it is in the log file), no GPU warning, no torch worker warning,
    one line about the clamped worker count."""
    out, proc = run
    assert 'SOLVER:' not in proc.stdout and '\nSOLVER:\n' in read_log(out)
    assert 'GPU' not in proc.stdout + proc.stderr
    assert 'worker processes' not in proc.stderr
    clamped = f'DATALOADER.NUM_WORKERS {CPUS + 1} is more than the {CPUS} CPUs here: using {CPUS}'
    assert proc.stdout.count(clamped) == 1


def test_the_run_config_is_saved_and_complete(run, tiny_run):
    out, _ = run
    saved = load_config(str(out / 'config.yaml'))
    given = load_config('', opts(tiny_run, out, 'MODEL.METHOD', 'pcl'))
    assert saved == given


def test_curves_go_to_metrics_csv_and_tensorboard(run):
    out, _ = run
    rows = read_metrics(out / 'metrics.csv')
    losses = [(r['epoch'], r['iteration']) for r in rows if r['name'] == 'train/loss']
    assert losses == [(1, 3), (1, 4), (2, 7), (2, 8)]  # every LOG_PERIOD and each epoch's end
    (val,) = [r for r in rows if r['name'] == 'val/mAP']
    assert (val['epoch'], val['iteration']) == (2, 8)
    assert val['value'] == pytest.approx(logged_results(read_log(out))[0]['mAP'], abs=5e-4)
    events = EventAccumulator(str(out / 'tensorboard' / 'pcl'))
    events.Reload()
    for name in ('train/loss', 'train/lr', 'val/mAP', 'val/Rank-1'):
        mine = [(r['iteration'], r['value']) for r in rows if r['name'] == name]
        theirs = [(e.step, e.value) for e in events.Scalars(name)]
        assert [s for s, _ in theirs] == [s for s, _ in mine]
        assert [v for _, v in theirs] == pytest.approx([v for _, v in mine], rel=1e-5)


def _main(monkeypatch, script, args, main, *main_args):
    monkeypatch.setattr(sys, 'argv', [script, *map(str, args)])
    return main(*main_args)


def test_a_fresh_run_never_overwrites_an_earlier_one(run, tiny_run, monkeypatch):
    out, _ = run
    before = {f: (out / f).read_bytes() for f in os.listdir(out) if f.endswith('.pth')}
    with pytest.raises(ReIDError, match=rf'OUTPUT_DIR {out} already holds an earlier training '
                                        r'run \(.*\); .*add --resume to continue'):
        _main(monkeypatch, 'train_pcl.py', opts(tiny_run, out), cli.train_main, 'pcl', 'train')
    assert before == {f: (out / f).read_bytes() for f in os.listdir(out) if f.endswith('.pth')}


def test_test_script_takes_the_run_config_and_shows_where_pictures_go(run, monkeypatch,
                                                                      caplog):
    out, _ = run
    args = ['--config_file', out / 'config.yaml', 'TEST.WEIGHT', out / f'{NAME}_2.pth',
            'TEST.VISUALIZE', 2, 'OUTPUT_DIR', out / 'test']
    result = _main(monkeypatch, 'test_clipreid.py', args, cli.test_main, 'test')
    val = [r for r in read_metrics(out / 'metrics.csv') if r['name'] == 'val/mAP'][0]
    assert result.mAP == pytest.approx(val['value'], abs=1e-6)  # training's last validation
    log = read_log(out / 'test', 'test_log.txt')
    assert f'rank lists of 2 queries written to {out / "test" / "rank_lists"}' in log
    assert f'CMC plot written to {out / "test" / "cmc.png"}' in log
    assert len(os.listdir(out / 'test' / 'rank_lists')) == 2


def test_command_lines():
    args = parse_args('train', resume=True, argv=['--config_file', 'c.yml', 'OUTPUT_DIR', 'x',
                                                  '--resume', 'SOLVER.BASE_LR', '-1e-3'])
    assert args.resume and args.config_file == 'c.yml'
    assert args.opts == ['OUTPUT_DIR', 'x', 'SOLVER.BASE_LR', '-1e-3']
    assert not parse_args('train', resume=True, argv=['OUTPUT_DIR', 'x']).resume
    for argv in (['--config_file', 'c.yml', 'TEST.WEIGHT', 'w', '--resume'],
                 ['--resume', '--config_file', 'c.yml']):  # test scripts do not offer it
        with pytest.raises(ReIDError, match='takes no --resume'):
            parse_args('test', argv=argv)
    with pytest.raises(ReIDError, match='unknown option --resme '):
        parse_args('train', resume=True, argv=['OUTPUT_DIR', 'x', '--resme'])


@pytest.mark.parametrize('method, key', [('clipreid', 'SOLVER.STAGE2.IMS_PER_BATCH'),
                                         ('pcl', 'SOLVER.IMS_PER_BATCH')])
def test_pk_batch_error_names_the_key_of_the_stage(tiny_run, tmp_path, monkeypatch, method,
                                                   key):
    args = opts(tiny_run, tmp_path, key, 7)
    with pytest.raises(ReIDError, match=rf'PK batch size {key} \(7\) must be a multiple of '
                                        r'DATALOADER.NUM_INSTANCE \(2\)'):
        _main(monkeypatch, 'train.py', args, cli.train_main, method, 'train')


@pytest.fixture
def weight(tiny_run, tmp_path):
    """A PCL checkpoint of the tiny run's model (random heads) and the overrides it fits."""
    args = opts(tiny_run, tmp_path / 'out', 'MODEL.METHOD', 'pcl')
    cfg = load_config('', args)
    model = make_model(cfg, 6, 4, 1)
    save_weights(model, tmp_path / 'w.pth')
    return str(tmp_path / 'w.pth'), args


@pytest.mark.parametrize('fmt', ['torchscript', 'state_dict'])
def test_clip_weights_given_as_test_weight_are_named(weight, tmp_path, monkeypatch, fmt):
    clip = save_tiny_clip(tmp_path / 'clip.pt', 'vit', fmt)
    with pytest.raises(ReIDError, match=f'checkpoint {clip} holds OpenAI CLIP weights, not a '
                                        're-ID model: CLIP weights go to MODEL.PRETRAIN_PATH'):
        _main(monkeypatch, 'test_clipreid.py', [*weight[1], 'TEST.WEIGHT', clip], cli.test_main,
              'test')


def test_a_size_mismatch_names_input_size_train(weight, monkeypatch):
    path, args = weight
    with pytest.raises(ReIDError, match=r'image_encoder.positional_embedding .* The config key '
                                        r'that most likely differs from the training run: '
                                        r'INPUT.SIZE_TRAIN .*config.yaml'):
        _main(monkeypatch, 'test_clipreid.py',
              [*args, 'TEST.WEIGHT', path, 'INPUT.SIZE_TRAIN', '[128,64]'], cli.test_main, 'test')


def test_a_missing_sie_embedding_names_the_sie_keys(weight):
    path, args = weight
    cfg = load_config('', [*args, 'MODEL.SIE_CAMERA', 'True'])
    with pytest.raises(ReIDError, match='most likely differs .*: MODEL.SIE_CAMERA'):
        load_into(make_model(cfg, 6, 4, 1), torch.load(path), path)


def test_custom_lists_evaluate_without_a_training_list(tmp_path_factory, tmp_path, monkeypatch):
    root = demo_root(tmp_path_factory, ('market1501', 'msmt17', 'veri', 'vehicleid', 'animals',
                                        'custom'), ids=12)
    lists = ['DATASETS.NAMES', 'custom', 'DATASETS.ROOT_DIR', f'{root}/custom',
             'DATASETS.QUERY_LIST', 'query.txt', 'DATASETS.GALLERY_LIST', 'gallery.txt',
             'MODEL.METHOD', 'baseline']
    args = small_opts(root, tiny_clip(tmp_path_factory), tmp_path, *lists)
    cfg = load_config('', [*args, 'DATASETS.TRAIN_LIST', 'train.txt'])
    with_train = make_dataloader(cfg, training=False)
    model = make_model(cfg, with_train.num_classes, with_train.camera_num, 1)
    save_weights(model, tmp_path / 'w.pth')
    data = make_dataloader(load_config('', args), training=False)
    assert data.dataset.train == [] and len(data.val_loader.dataset) == \
        len(with_train.val_loader.dataset)
    plain = _main(monkeypatch, 'test_clipreid.py', [*args, 'TEST.WEIGHT', tmp_path / 'w.pth'],
                  cli.test_main, 'test')
    with pytest.raises(ReIDError, match='DATASETS.TRAIN_LIST is not set'):
        make_dataloader(load_config('', args))  # training still needs it
    listed = _main(monkeypatch, 'test_clipreid.py', [*args, 'DATASETS.TRAIN_LIST', 'train.txt',
                                                     'TEST.WEIGHT', tmp_path / 'w.pth'],
                   cli.test_main, 'test')
    assert plain.mAP == listed.mAP


def test_rank_lists_caption_identity_and_camera(run, monkeypatch):
    """Every tile of a rank list says 'id <pid> cam <camid>' of its image."""
    import utils.visualize as visualize
    out, _ = run
    captions, tile = [], visualize._tile
    monkeypatch.setattr(visualize, '_tile', lambda path, colour, lines, font, heat=None: (
        captions.append((path, lines)), tile(path, colour, lines, font, heat))[1])
    args = ['--config_file', out / 'config.yaml', 'TEST.WEIGHT', out / f'{NAME}_2.pth',
            'TEST.VISUALIZE', 1, 'OUTPUT_DIR', out / 'captions']
    _main(monkeypatch, 'test_clipreid.py', args, cli.test_main, 'test')
    assert len(captions) == 11  # the query and its top 10
    for path, lines in captions:
        pid, cam = os.path.basename(path).split('_')[:2]  # Market names: 0002_c1s1_...
        assert lines[-1] == f'id {int(pid)} cam {int(cam[1]) - 1}'


def test_cmc_plot_names_dataset_checkpoint_map_and_writes_its_numbers(run, monkeypatch, tmp_path):
    import utils.visualize as visualize
    out, _ = run
    drawn = []
    monkeypatch.setattr(visualize, 'plot_cmc', lambda curves, path, title: drawn.append(
        (curves, title)))
    args = ['--config_file', out / 'config.yaml', 'TEST.WEIGHT', out / f'{NAME}_2.pth',
            'TEST.VISUALIZE', 1, 'OUTPUT_DIR', out / 'cmc']
    result = _main(monkeypatch, 'test_clipreid.py', args, cli.test_main, 'test')
    ((curves, title),) = drawn
    assert title == f'market1501 | {NAME}_2.pth | standard protocol'
    assert list(curves) == [f'mAP {100 * result.mAP:.1f}%, Rank-1 {100 * result.cmc[0]:.1f}%']
    # matplotlib draws it on a 0-100% axis whatever the values; the numbers drawn are
    # written beside the picture
    plot_cmc({'half': [0.5] * 50, 'short': [0.25, 0.75]}, str(tmp_path / 'half.png'))
    assert Image.open(tmp_path / 'half.png').size == (640, 440)
    curves = read_cmc_csv(str(tmp_path / 'half.csv'))
    assert list(curves) == ['half', 'short'] and np.array_equal(curves['half'], [0.5] * 50)
    assert np.array_equal(curves['short'], [0.25, 0.75])


def test_resume_flag_after_the_overrides_continues_the_run(run, tiny_run, tmp_path):
    """On a copy of the module's run (the other tests read it as it is), extended to 3 epochs."""
    out = tmp_path / 'out'
    shutil.copytree(run[0], out)
    proc = run_ok('train_pcl.py', [*opts(tiny_run, out, 'SOLVER.MAX_EPOCHS', 3), '--resume'])
    assert 'resumed pcl after epoch 2' in proc.stdout
    assert os.path.exists(out / f'{NAME}_3.pth')
    rows = read_metrics(out / 'metrics.csv')
    keys = [(r['stage'], r['iteration'], r['name']) for r in rows]
    assert len(keys) == len(set(keys)) and max(r['epoch'] for r in rows) == 3


def test_an_empty_test_weight_names_the_runs_newest_checkpoint(tmp_path):
    from utils.run_folder import missing_weight_message
    out = tmp_path / 'run[1]'  # glob characters in the folder name
    cfg = load_config('', ['OUTPUT_DIR', str(out), 'MODEL.NAME', 'ViT-B/16'])
    assert missing_weight_message(cfg).endswith(f'TEST.WEIGHT {out}/ViT-B-16_60.pth')
    out.mkdir()
    for name in ('ViT-B-16_9.pth', 'ViT-B-16_10.pth', 'ViT-B-16_stage1_120.pth', 'other_99.pth'):
        (out / name).touch()
    assert missing_weight_message(cfg).endswith(f'TEST.WEIGHT {out}/ViT-B-16_10.pth')
