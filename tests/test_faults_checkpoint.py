"""Checkpoint faults: a full disk while saving, empty or truncated files, and the temporary
files of a run killed while saving."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import utils.atomic
from _faults_helpers import fill_disk
from config import load_config
from model.checkpoint import read_state_dict, read_trained
from processor.engine import Trainer
from utils.checkpoint import atomic_save, find_resume_file, load_training_state
from utils.errors import ReIDError, cli_main


def test_disk_full_while_saving_names_the_file_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    path = tmp_path / 'toy_20.pth'
    atomic_save({'w': torch.ones(3)}, tmp_path / 'toy_10.pth')
    atomic_save({'w': torch.ones(3)}, path)
    atomic_save({'model': {}, 'epoch': 10}, tmp_path / 'toy_train_state.pth')
    fill_disk(monkeypatch, utils.atomic)
    with pytest.raises(ReIDError) as err:
        atomic_save({'w': torch.zeros(1000)}, path)  # torch: 'RuntimeError: ... unexpected pos'
    message = str(err.value)
    assert f'cannot write {path}' in message and 'no space left on device (ENOSPC)' in message
    assert 'toy_train_state.pth' in message and 'newest checkpoint toy_' in message
    assert 'the earlier toy_20.pth is kept unchanged' in message
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ['toy_10.pth', 'toy_20.pth', 'toy_train_state.pth']


class _ToyTrainer(Trainer):
    stage = 'train'


def _toy_trainer(tmp_path):
    cfg = load_config('', ['OUTPUT_DIR', str(tmp_path), 'MODEL.NAME', 'toy'])
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runtime = SimpleNamespace(device=torch.device('cpu'), amp_dtype=None, rank=0, world_size=1)
    return _ToyTrainer(cfg, cfg.SOLVER, model, optimizer,
                       torch.optim.lr_scheduler.StepLR(optimizer, 10), runtime, data=None)


def test_training_save_on_a_full_disk_ends_with_one_error_line(tmp_path, monkeypatch, capsys):
    trainer = _toy_trainer(tmp_path)
    trainer.save_checkpoint(10)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    fill_disk(monkeypatch, utils.atomic, room=200)
    with pytest.raises(SystemExit) as stop:
        cli_main(lambda: trainer.save_checkpoint(20))()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'Traceback' not in err
    assert err.startswith(f'error: cannot write {tmp_path / "toy_20.pth"}: no space left')
    assert 'newest checkpoint toy_10.pth and training state toy_train_state.pth' in err
    after = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    assert after == before  # nothing lost, no temporary file


def _empty_and_cut(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save({'model': {'w': torch.zeros(500)}, 'epoch': 1}, good)
    empty, cut = tmp_path / 'empty.pth', tmp_path / 'cut.pth'
    empty.write_bytes(b'')
    cut.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    return empty, cut


def test_empty_weight_file_says_empty(tmp_path):
    empty, _ = _empty_and_cut(tmp_path)
    cfg = load_config('', ['TEST.WEIGHT', str(empty)])
    with pytest.raises(ReIDError, match=rf'checkpoint {empty}: the file is empty \(0 bytes'):
        read_trained(cfg)


def test_empty_training_state_says_empty(tmp_path):
    empty, _ = _empty_and_cut(tmp_path)
    with pytest.raises(ReIDError, match=r'cannot read training state .*empty\.pth: the file is '
                                        r'empty \(0 bytes'):
        load_training_state(empty)


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_truncated_checkpoint_says_truncated_not_save_state_dict(tmp_path, legacy):
    good, cut = tmp_path / 'good.pth', tmp_path / 'cut.pth'
    torch.save({'w': torch.zeros(500)}, good, _use_new_zipfile_serialization=not legacy)
    cut.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    for read in (read_state_dict, load_training_state):
        with pytest.raises(ReIDError, match='truncated or damaged') as err:
            read(cut)
        assert 'state_dict() instead' not in str(err.value)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILLED_SAVE = f"""
import sys, time
sys.path.insert(0, {REPO!r})
import torch
from utils.checkpoint import atomic_save

def slow_save(obj, f):
    f.write(b'half a checkpoint')
    f.flush()
    print('writing', flush=True)
    time.sleep(60)

torch.save = slow_save
atomic_save({{'epoch': 20}}, sys.argv[1])
"""


def killed_while_saving(path):
    """Run a save of path in another process and SIGKILL it half-way; its pid."""
    proc = subprocess.Popen([sys.executable, '-c', KILLED_SAVE, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'writing'
    proc.kill()
    proc.wait()
    proc.stdout.close()
    return proc.pid  # reaped: no live process has it (until the system reuses it)


def test_resume_removes_temporary_files_of_a_killed_save(tmp_path, caplog):
    atomic_save({'model': {}, 'epoch': 10}, tmp_path / 'toy_train_state.pth')
    dead = killed_while_saving(tmp_path / 'toy_train_state.pth')
    stale = tmp_path / f'.toy_train_state.pth.{dead}.tmp'
    assert stale.read_bytes() == b'half a checkpoint'
    stale_weights = tmp_path / f'.toy_20.pth.{dead}.tmp'
    stale_weights.write_bytes(b'half')
    live = tmp_path / f'.toy_30.pth.{os.getpid()}.tmp'  # a save in progress: left alone
    live.write_bytes(b'being written')
    cfg = load_config('', ['OUTPUT_DIR', str(tmp_path)])
    with caplog.at_level('WARNING', logger='reid'):
        found = find_resume_file(cfg, resume_flag=True)
    assert found == str(tmp_path / 'toy_train_state.pth')
    assert load_training_state(found)['epoch'] == 10
    assert not stale.exists() and not stale_weights.exists() and live.exists()
    assert f'.toy_train_state.pth.{dead}.tmp' in caplog.text and 'removed 2' in caplog.text
