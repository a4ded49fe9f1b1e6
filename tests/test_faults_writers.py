"""Writers that fail half-way (ONNX export, metrics.csv, gallery .npz, config.yaml) leave no
temporary file, and an earlier file at the destination stays intact."""
import csv
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import utils.atomic
import utils.training_log
from _faults_helpers import fill_disk
from config import load_config
from processor.export import export_onnx
from processor.gallery import save_gallery
from utils.atomic import atomic_write
from utils.errors import ReIDError
from utils.run_folder import save_run_config
from utils.training_log import CSV_NAME, TrainingLog, read_metrics

EARLIER = b'an earlier file that must survive'


def earlier_file(folder, name):
    path = folder / name
    path.write_bytes(EARLIER)
    return path


def assert_untouched(path):
    assert path.read_bytes() == EARLIER
    assert os.listdir(path.parent) == [path.name]  # no temporary file


def half_write_then(error):
    """A writer that puts some bytes into its file, then fails."""
    def writer(*args, **kwargs):
        target = next(a for a in args if hasattr(a, 'write'))
        target.write(b'PK\x03\x04 half')
        raise error
    return writer


def test_atomic_write_on_a_full_device_is_one_clear_error(tmp_path, monkeypatch):
    path = earlier_file(tmp_path, 'out.bin')
    fill_disk(monkeypatch, utils.atomic, room=10)
    with pytest.raises(ReIDError, match=rf'cannot write {path}: no space left on device .*'
                                        r'the earlier out\.bin is kept unchanged'):
        with atomic_write(path) as f:
            f.write(b'x' * 100)
    assert_untouched(path)


class _Images(torch.nn.Module):
    def forward(self, images):
        return images.mean(dim=(2, 3))


def _extractor():
    cfg = load_config('', ['INPUT.SIZE_TEST', '[8, 4]', 'MODEL.METHOD', 'baseline'])
    return SimpleNamespace(cfg=cfg, model=_Images(), normalises=True, weight='w.pth',
                           device=torch.device('cpu'))


def test_failed_onnx_export_keeps_the_earlier_model(tmp_path, monkeypatch):
    import onnx
    path = earlier_file(tmp_path, 'm.onnx')
    monkeypatch.setattr(onnx, 'save_model', half_write_then(OSError('write failed')))
    with pytest.raises(OSError, match='write failed'):
        export_onnx(_extractor(), str(path))
    assert_untouched(path)


def test_onnx_export_refused_by_its_check_keeps_the_earlier_model(tmp_path):
    path = earlier_file(tmp_path, 'm.onnx')

    def refuse(written):
        assert os.path.getsize(written) > 0  # checked before it replaces the destination
        raise ReIDError('features differ')

    with pytest.raises(ReIDError, match='features differ'):
        export_onnx(_extractor(), str(path), verify=refuse)
    assert_untouched(path)
    export_onnx(_extractor(), str(path))
    assert path.read_bytes() != EARLIER


def test_failed_gallery_save_keeps_the_earlier_file(tmp_path, monkeypatch):
    path = earlier_file(tmp_path, 'g.npz')
    images = SimpleNamespace(paths=['a.jpg', 'b.jpg'], pids=[1, 2], camids=[0, 1])
    monkeypatch.setattr(np, 'savez', half_write_then(ValueError('cannot pickle')))
    with pytest.raises(ValueError):
        save_gallery(str(path), np.ones((2, 3)), images, _extractor())
    assert_untouched(path)


def test_failed_config_yaml_keeps_the_earlier_file(tmp_path, monkeypatch):
    path = earlier_file(tmp_path, 'config.yaml')
    cfg = load_config('', ['OUTPUT_DIR', str(tmp_path)])
    fill_disk(monkeypatch, utils.atomic, room=50)
    with pytest.raises(ReIDError, match='no space left on device'):
        save_run_config(cfg)
    assert_untouched(path)


def _log_with_rows(tmp_path):
    cfg = load_config('', ['OUTPUT_DIR', str(tmp_path), 'SOLVER.TENSORBOARD', 'False'])
    log = TrainingLog(cfg, 'train')
    log.add(1, 10, {'train/loss': 1.5})
    log.close()
    return cfg, tmp_path / CSV_NAME


def test_failed_metrics_append_leaves_no_half_row(tmp_path, monkeypatch):
    cfg, path = _log_with_rows(tmp_path)
    before = path.read_bytes()
    # the device fills up in the middle of the next rows
    fill_disk(monkeypatch, utils.training_log, room=len(before) + 20)
    log = TrainingLog(cfg, 'train', start_iteration=10)
    with pytest.raises(ReIDError, match=rf'cannot write {path}: no space left on device'):
        log.add(2, 20, {'train/loss': 1.25, 'train/lr': 0.001})
    log.close()
    assert path.read_bytes() == before
    assert [r['value'] for r in read_metrics(path)] == [1.5]


def test_failed_metrics_rewrite_keeps_the_earlier_rows(tmp_path, monkeypatch):
    cfg, path = _log_with_rows(tmp_path)
    before = path.read_bytes()

    def half_rows(self, rows):
        self.writer.writerow(['train', 1])
        raise OSError('write failed')

    monkeypatch.setattr(csv.DictWriter, 'writerows', half_rows)
    with pytest.raises(OSError, match='write failed'):
        TrainingLog(cfg, 'train')  # a fresh start of the stage drops its rows: a rewrite
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [CSV_NAME]
