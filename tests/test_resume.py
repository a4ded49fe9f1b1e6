"""Resume: a run killed (SIGKILL) in the middle of an epoch and restarted with --resume ends
with exactly the weights of a run that was never interrupted (deterministic CPU settings,
no loader workers). The last state file is the one of the last finished epoch."""
import os

from _run_helpers import (max_difference, run_and_kill, run_ok, state, tiny_run,  # noqa: F401
                          train_opts, weights)


def _resume(script, opts):
    return run_ok(script, ['--resume', *opts]).stdout


def _assert_equal_weights(a, b):
    assert max_difference(a, b) == 0.0


def test_pcl_resumes_mid_epoch_kill(tmp_path, tiny_run):
    full, part = tmp_path / 'full', tmp_path / 'part'
    opts = lambda out: train_opts(tiny_run, out, 'SOLVER.MAX_EPOCHS', 3, 'SOLVER.ITERS', 6)  # noqa: E731
    run_ok('train_pcl.py', opts(full))
    run_and_kill('train_pcl.py', opts(part), 'pcl epoch[2] iteration[1] ', tmp_path / 'err')
    assert state(part, 'pcl')['epoch'] == 1 and not os.path.exists(part / 'tiny-ViT_2.pth')
    out = _resume('train_pcl.py', opts(part))
    assert 'resumed pcl after epoch 1' in out and 'pcl epoch[1]' not in out
    _assert_equal_weights(weights(part, 3), weights(full, 3))
    resumed, reference = state(part, 'pcl'), state(full, 'pcl')
    assert resumed['iteration'] == reference['iteration'] == 18
    assert resumed['extra']['memory']['features'].equal(reference['extra']['memory']['features'])
    assert resumed['optimizer']['state'].keys() == reference['optimizer']['state'].keys()


def test_clipreid_resumes_in_stage1_and_in_stage2(tmp_path, tiny_run):
    """Killed in stage 1: its state resumes stage 1, then stage 2 runs. Killed again in stage
    2: the stage-2 state skips stage 1."""
    full, part = tmp_path / 'full', tmp_path / 'part'
    opts = lambda out: train_opts(tiny_run, out, 'SOLVER.STAGE1.IMS_PER_BATCH', 4)  # noqa: E731
    run_ok('train_clipreid.py', opts(full))

    run_and_kill('train_clipreid.py', opts(part), 'stage1 epoch[2] iteration[1] ', tmp_path / 'e1')
    assert state(part, 'stage1')['epoch'] == 1 and not os.path.exists(part / 'tiny-ViT_1.pth')
    lines = run_and_kill('train_clipreid.py', ['--resume', *opts(part)],
                         'stage2 epoch[2] iteration[1] ', tmp_path / 'e2')
    assert any('resumed stage1 after epoch 1' in line for line in lines)
    assert not any('stage1 epoch[1]' in line for line in lines)
    assert state(part, 'stage2')['epoch'] == 1 and not os.path.exists(part / 'tiny-ViT_2.pth')

    out = _resume('train_clipreid.py', opts(part))
    assert 'resumed stage2 after epoch 1' in out and 'stage1 epoch' not in out
    _assert_equal_weights(weights(part, 2), weights(full, 2))
    assert state(part, 'stage2')['iteration'] == state(full, 'stage2')['iteration']
