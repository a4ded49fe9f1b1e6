"""Resume: a run killed (SIGKILL) in the middle of an epoch and restarted with --resume ends
with exactly the weights of a run that was never interrupted (deterministic CPU settings,
no loader workers). The last state file is the one of the last finished epoch. A loss that
is not finite stops the run and leaves the last good checkpoint as it was."""
import os
import re

import pytest
import torch

from _run_helpers import (NAME, max_difference, run, run_and_kill, run_ok,  # noqa: F401
                          screen_lines, state, tiny_run, train_opts, weights)
from config import load_config
from processor.engine import Trainer
from utils.errors import ReIDError


def _resume(script, opts):
    return run_ok(script, ['--resume', *opts]).stdout


def _assert_equal_weights(a, b):
    assert max_difference(a, b) == 0.0


def test_pcl_resumes_mid_epoch_kill(tmp_path, tiny_run):
    def opts(out):  # epochs of 40 iterations: the kill lands inside epoch 2
        return train_opts(tiny_run, out, 'SOLVER.MAX_EPOCHS', 3, 'SOLVER.ITERS', 40)

    full, part = tmp_path / 'full', tmp_path / 'part'
    run_ok('train_pcl.py', opts(full))
    run_and_kill('train_pcl.py', opts(part), 'pcl epoch[2] iteration[1] ', tmp_path / 'err')
    assert state(part, 'pcl')['epoch'] == 1 and not os.path.exists(part / f'{NAME}_2.pth')
    out = _resume('train_pcl.py', opts(part))
    assert 'resumed pcl after epoch 1' in out and 'pcl epoch[1]' not in out
    _assert_equal_weights(weights(part, 3), weights(full, 3))
    resumed, reference = state(part, 'pcl'), state(full, 'pcl')
    assert resumed['iteration'] == reference['iteration'] == 120
    assert resumed['extra']['memory']['features'].equal(reference['extra']['memory']['features'])
    for key, moments in reference['optimizer']['state'].items():  # Adam's running moments
        assert all(moments[n].equal(resumed['optimizer']['state'][key][n]) for n in moments)


def test_clipreid_resumes_in_stage1_and_in_stage2(tmp_path, tiny_run):
    """Killed three times, resumed each time: in stage 1 (its state resumes stage 1, then
    stage 2 runs), at the start of stage 2 (the final stage-1 state: stage 2 starts afresh,
    its center loss drawn from the restored generators) and in stage 2 (the stage-2 state,
    center loss included, skips stage 1)."""
    def opts(out):  # epochs of 72 (stage 1) and ~36 (stage 2) iterations: the kills land inside
        return train_opts(tiny_run, out, 'SOLVER.STAGE1.IMS_PER_BATCH', 2,
                          'SOLVER.STAGE2.IMS_PER_BATCH', 4, 'MODEL.IF_WITH_CENTER', 'yes')

    def kill_at(marker, resume):
        args = ['--resume', *opts(part)] if resume else opts(part)
        return ''.join(run_and_kill('train_clipreid.py', args, marker, tmp_path / 'err'))

    full, part = tmp_path / 'full', tmp_path / 'part'
    run_ok('train_clipreid.py', opts(full))
    kill_at('stage1 epoch[2] iteration[1] ', resume=False)
    assert state(part, 'stage1')['epoch'] == 1 and not os.path.exists(part / f'{NAME}_1.pth')

    out = kill_at('stage2 epoch[1] iteration[1] ', resume=True)
    assert 'resumed stage1 after epoch 1' in out and 'stage1 epoch[1]' not in out
    assert state(part, 'stage1')['epoch'] == 2 and not os.path.exists(part / f'{NAME}_1.pth')

    out = kill_at('stage2 epoch[2] iteration[1] ', resume=True)
    assert 'resumed stage1 after epoch 2' in out and 'stage1 epoch[' not in out
    assert state(part, 'stage2')['epoch'] == 1 and not os.path.exists(part / f'{NAME}_2.pth')

    out = _resume('train_clipreid.py', opts(part))
    assert 'resumed stage2 after epoch 1' in out and 'stage1 epoch' not in out
    _assert_equal_weights(weights(part, 2), weights(full, 2))
    resumed, reference = state(part, 'stage2'), state(full, 'stage2')
    assert resumed['iteration'] == reference['iteration']
    assert resumed['loss']['center.centers'].equal(reference['loss']['center.centers'])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_run):
    """SGD at lr 1e36 from epoch 2 on (epoch 1 warms up at 1e-2) makes the weights explode."""
    out = tmp_path / 'out'
    opts = train_opts(tiny_run, out, 'SOLVER.OPTIMIZER_NAME', 'SGD', 'SOLVER.BASE_LR', 1e36,
                      'SOLVER.WARMUP_FACTOR', 1e-38, 'SOLVER.MAX_EPOCHS', 3)
    proc = run('train_pcl.py', opts)
    lines = screen_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    kept = re.escape(str(out / f'{NAME}_pcl_state.pth'))
    assert re.fullmatch(r'error: pcl: the loss is (nan|inf|-inf) at epoch 2, iteration \d+; '
                        rf'training stopped \(the last good checkpoint is {kept}\)\. .*', lines[0])
    assert lines[0] in (out / 'train_log.txt').read_text()
    assert sorted(os.listdir(out)) == sorted(['.lock', f'{NAME}_1.pth', f'{NAME}_pcl_state.pth',
                                              'config.yaml', 'metrics.csv', 'tensorboard',
                                              'train_log.txt'])
    assert state(out, 'pcl')['epoch'] == 1
    assert all(torch.isfinite(w).all() for w in weights(out, 1).values())


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    trainer = Trainer.__new__(Trainer)  # only what save_checkpoint reads
    trainer.cfg = load_config('', ['OUTPUT_DIR', str(tmp_path)])
    trainer.stage, trainer.model = 'pcl', torch.nn.Linear(2, 2)
    with torch.no_grad():
        trainer.model.weight[0, 0] = float('inf')
    with pytest.raises(ReIDError, match='after epoch 3 the weights weight are not finite; not '
                                        'saved, training stopped .no checkpoint was written yet'):
        trainer.save_checkpoint(3)
    assert os.listdir(tmp_path) == []
