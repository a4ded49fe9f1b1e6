"""Bad input through the real entry scripts: one line `error: ...` on stderr (what a terminal
shows once the progress bars are cleared), no traceback, exit code 2, and the files already
in OUTPUT_DIR untouched (a failed run only appends its lines, the error included, to the log
file). A bug also ends in one line (exit code 1), its traceback kept in the log file."""
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from _run_helpers import NAME, run, screen_lines, tiny_run, train_opts  # noqa: F401
from config import load_config
from model import make_model
from model.tiny_clip import save_tiny_clip
from utils.errors import ReIDError, cli_main, one_line


@pytest.fixture
def out(tmp_path):
    """An OUTPUT_DIR holding files of earlier work that a run must leave alone: another
    model's checkpoint and a saved distance matrix (a folder holding a training state of
    this model is refused before anything else, see test_newcomer_path.py)."""
    folder = tmp_path / 'out'
    folder.mkdir()
    torch.save({'w': torch.ones(3)}, folder / 'RN50_60.pth')
    np.save(folder / 'dist.npy', np.zeros((2, 2)))
    return folder


# What a run may add before it fails in training: its lock, config and the head of its curves.
RUN_RECORDS = {'.lock', 'config.yaml', 'metrics.csv', 'tensorboard'}


def _files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))
            if not name.endswith('_log.txt') and name not in RUN_RECORDS}


def _assert_one_error(script, args, out, *fragments, env=None):
    before = _files(out)
    proc = run(script, args, env=env, timeout=120)
    lines = screen_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith('error: ') and 'Traceback' not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert _files(out) == before
    return lines[0]


def _copy_data(tiny, tmp_path):
    """A private copy of the data (for tests that damage it) and its train folder."""
    root = tmp_path / 'data'
    shutil.copytree(tiny[0], root)
    return (str(root), tiny[1]), root / 'Market-1501-v15.09.15' / 'bounding_box_train'


def test_missing_dataset_folder(tmp_path, tiny_run, out):
    opts = train_opts((str(tmp_path / 'nowhere'), tiny_run[1]), out)
    _assert_one_error('train_pcl.py', opts, out, 'missing folder', str(tmp_path / 'nowhere'))


def test_file_name_that_does_not_parse(tmp_path, tiny_run, out):
    tiny, train = _copy_data(tiny_run, tmp_path)
    shutil.copy(sorted(train.iterdir())[0], train / 'holiday.jpg')
    _assert_one_error('train_pcl.py', train_opts(tiny, out), out, 'cannot parse file name',
                      str(train / 'holiday.jpg'))


def test_empty_split(tmp_path, tiny_run, out):
    tiny, train = _copy_data(tiny_run, tmp_path)
    for image in (train.parent / 'query').iterdir():
        image.unlink()
    _assert_one_error('train_pcl.py', train_opts(tiny, out), out, 'query split is empty')


@pytest.fixture
def truncated(tmp_path, tiny_run):
    """(data, clip) with one train image cut to its first 200 bytes, and that image."""
    tiny, train = _copy_data(tiny_run, tmp_path)
    image = sorted(train.iterdir())[5]
    image.write_bytes(image.read_bytes()[:200])
    return tiny, image


def test_corrupt_image_stops_naming_it_even_in_a_loader_worker(truncated, out):
    tiny, image = truncated
    opts = train_opts(tiny, out, 'DATALOADER.NUM_WORKERS', 2)
    _assert_one_error('train_pcl.py', opts, out, 'cannot read image', str(image))


def test_corrupt_image_skipped_and_counted(truncated, tmp_path):
    tiny, image = truncated
    opts = train_opts(tiny, tmp_path / 'out', 'DATASETS.ON_BAD_IMAGE', 'skip',
                      'SOLVER.MAX_EPOCHS', 1, 'SOLVER.ITERS', 1)
    proc = run('train_pcl.py', opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'skipped 1 unreadable train images (DATASETS.ON_BAD_IMAGE=skip), e.g. {image}' \
        in proc.stdout
    assert (tmp_path / 'out' / f'{NAME}_1.pth').exists()


def test_unknown_config_key(tiny_run, out):
    opts = train_opts(tiny_run, out, 'SOLVER.BASE_LRR', 0.1)
    _assert_one_error('train_pcl.py', opts, out, 'unknown config key SOLVER.BASE_LRR')


def test_weight_of_another_architecture(tmp_path, tiny_run, out):
    rn_clip = save_tiny_clip(tmp_path / 'rn.pt', 'rn', 'state_dict')
    cfg = load_config('', ['MODEL.PRETRAIN_PATH', str(rn_clip), 'MODEL.METHOD', 'baseline',
                           'INPUT.SIZE_TRAIN', '[64,32]', 'INPUT.SIZE_TEST', '[64,32]'])
    weight = tmp_path / 'rn_baseline.pth'
    torch.save(make_model(cfg, 6, 4, 1).state_dict(), weight)
    opts = train_opts(tiny_run, out, 'MODEL.METHOD', 'baseline', 'TEST.WEIGHT', weight)
    _assert_one_error('test_clipreid.py', opts, out, f'checkpoint {weight} does not fit this model',
                      'image_encoder.')


def test_missing_clip_weights_offline(tmp_path, tiny_run, out):
    """No MODEL.PRETRAIN_PATH, an empty cache (HOME) and every proxy pointing at a closed local
    port: the download fails at once and the message says how to provide the file."""
    home = tmp_path / 'home'
    home.mkdir()
    proxy = 'http://127.0.0.1:9'
    env = {'HOME': str(home), 'no_proxy': '', 'NO_PROXY': '', **{
        key: proxy for key in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY')}}
    opts = train_opts(tiny_run, out, 'MODEL.PRETRAIN_PATH', '', 'MODEL.NAME', 'ViT-B-16')
    _assert_one_error('train_pcl.py', opts, out, "CLIP weights for MODEL.NAME 'ViT-B-16'",
                      'download failed', str(home / '.cache' / 'clip' / 'ViT-B-16.pt'),
                      'MODEL.PRETRAIN_PATH', env=env)
    assert not list((home / '.cache' / 'clip').iterdir())  # no partial download left


@pytest.mark.parametrize('case', ['pickled_model', 'weights_as_resume_state',
                                  'state_of_another_method'])
def test_checkpoint_that_is_not_what_is_expected(case, tmp_path, tiny_run, out):
    path = tmp_path / 'file.pth'
    if case == 'pickled_model':  # a whole nn.Module instead of its state_dict
        torch.save(torch.nn.Linear(2, 2), path)
        script, opts, expected = 'test_clipreid.py', ['TEST.WEIGHT', path], 'not a state_dict'
    elif case == 'weights_as_resume_state':
        torch.save({'w': torch.ones(2)}, path)
        script, opts, expected = 'train_pcl.py', ['SOLVER.RESUME', path], \
            'is not a training-state file'
    else:
        torch.save({'model': {}, 'epoch': 1, 'stage': 'pcl'}, path)
        script, opts, expected = 'train_clipreid.py', ['SOLVER.RESUME', path], \
            "written by 'pcl' training; this run trains 'stage1' or 'stage2'"
    _assert_one_error(script, train_opts(tiny_run, out, *opts), out, expected)


def test_one_line_keeps_the_original_message_of_a_worker_error():
    wrapped = ReIDError('Caught ReIDError in DataLoader worker process 0.\nOriginal Traceback '
                        '(most recent call last):\n  File "x.py", line 1\nutils.errors.ReIDError'
                        ': cannot read image a.jpg: truncated')
    assert one_line(wrapped) == 'cannot read image a.jpg: truncated'
    assert one_line(ReIDError('config file x is not valid YAML: line 1\n  column 2')) == \
        'config file x is not valid YAML: line 1 column 2'


def test_output_dir_that_is_a_file(tmp_path, tiny_run, out):
    taken = out / 'notes.txt'
    taken.write_text('mine')
    _assert_one_error('train_pcl.py', train_opts(tiny_run, taken), out,
                      f'OUTPUT_DIR {taken} is a file, not a folder')


def test_a_bug_is_one_line_with_its_traceback_in_the_log(tmp_path, capsys):
    log = tmp_path / 'train_log.txt'
    handler = logging.FileHandler(log)
    logging.getLogger('reid').addHandler(handler)

    def main():
        raise RuntimeError('shapes differ\n  at layer 3')
    try:
        with pytest.raises(SystemExit) as stop:
            cli_main(main)()
    finally:
        logging.getLogger('reid').removeHandler(handler)
        handler.close()
    line = f'error: RuntimeError: shapes differ at layer 3 (traceback in {log})\n'
    assert stop.value.code == 1 and capsys.readouterr().err == line
    text = log.read_text()
    assert text.startswith('Traceback (most recent call last):') and text.endswith(line)
