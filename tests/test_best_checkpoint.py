"""Honest numbers (DATASETS.VAL_IDENTITIES): training scores the validation split held out of
the training identities, <MODEL.NAME>_best.pth is the epoch with the highest validation mAP
(ties: the earlier epoch; a resumed run keeps the record), and the test split is scored once
at the end, with the last and with the best checkpoint, each figure block naming its split."""
import json
import os
import re
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

import processor.best
import processor.engine
from _e2e_helpers import read_log
from _run_helpers import NAME, run, run_ok, state, tiny_run, train_opts, weights  # noqa: F401
from config import load_config
from processor import cli
from processor.engine import Trainer
from utils.errors import ReIDError
from utils.training_log import read_metrics

EPOCHS = 4
BLOCK = re.compile(r' INFO: Results on the (.+?) \((\w+ protocol[^()]*)\):$', re.M)


def _opts(tiny, out, *extra):
    return train_opts(tiny, out, 'SOLVER.EVAL_PERIOD', 1, 'DATASETS.VAL_IDENTITIES', 2, *extra)


def _rows(out, prefix):
    """{(epoch, name): value} of the pcl stage's metrics.csv rows named prefix..."""
    return {(r['epoch'], r['name']): r['value'] for r in read_metrics(out / 'metrics.csv')
            if r['stage'] == 'pcl' and r['name'].startswith(prefix)}


def _best_epoch(val_maps):
    """The epoch of the highest mAP, the earlier one on a tie."""
    return min(val_maps, key=lambda epoch: (-val_maps[epoch], epoch))


def _tensors_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _best_weights(out):
    return torch.load(out / f'{NAME}_best.pth', weights_only=True)


@pytest.fixture(scope='module')
def val_run(tmp_path_factory, tiny_run):
    """PCL for 4 epochs, evaluated and saved every epoch, 2 of the 6 identities held out."""
    out = tmp_path_factory.mktemp('val_run')
    run_ok('train_pcl.py', _opts(tiny_run, out, 'SOLVER.MAX_EPOCHS', EPOCHS))
    return out


def test_best_checkpoint_is_the_epoch_with_the_highest_validation_map(val_run):
    val_maps = {epoch: value for (epoch, _), value in _rows(val_run, 'val/mAP').items()}
    assert sorted(val_maps) == list(range(1, EPOCHS + 1))
    best = _best_epoch(val_maps)
    assert _tensors_equal(_best_weights(val_run), weights(val_run, best))
    assert state(val_run, 'pcl')['best']['epoch'] == best
    assert state(val_run, 'pcl')['best']['mAP'] == pytest.approx(val_maps[best], abs=1e-6)
    ends = _rows(val_run, 'test/')
    assert ends[(EPOCHS, 'test/best/epoch')] == best
    assert ends[(EPOCHS, 'test/last/epoch')] == EPOCHS
    assert {epoch for epoch, _ in ends} == {EPOCHS}  # the test split: once, at the end
    assert {name for _, name in ends} >= {'test/last/mAP', 'test/best/mAP', 'test/last/Rank-1',
                                          'test/best/Rank-1'}


def test_the_log_names_the_split_of_every_figure_block(val_run):
    log = read_log(val_run)
    val_maps = {epoch: value for (epoch, _), value in _rows(val_run, 'val/mAP').items()}
    best = _best_epoch(val_maps)
    assert 'Validation results (' not in log
    splits = [m.group(1) for m in BLOCK.finditer(log)]
    expected = ['validation split'] * EPOCHS + [f'test split, last checkpoint (epoch {EPOCHS})']
    if best != EPOCHS:  # the tiny run's best is epoch 3: the best weights are loaded and scored
        expected.append(f'test split, best checkpoint (epoch {best}, validation mAP '
                        f'{100 * val_maps[best]:.1f}%)')
    else:
        assert f'the best checkpoint is the last one (epoch {EPOCHS})' in log
    assert splits == expected
    assert 'validation split (DATASETS.VAL_IDENTITIES): 2 identities held out' in log
    saved = re.findall(r'best checkpoint so far: epoch (\d+), validation mAP', log)
    assert int(saved[-1]) == best and saved[0] == '1'


@pytest.mark.parametrize('which', ['best', 'last'])
def test_test_figures_are_those_of_the_test_script(val_run, which, monkeypatch):
    """test/<which>/* are what test_clipreid.py gives for that checkpoint with the run's config."""
    weight = f'{NAME}_best.pth' if which == 'best' else f'{NAME}_{EPOCHS}.pth'
    args = ['--config_file', val_run / 'config.yaml', 'TEST.WEIGHT', val_run / weight,
            'OUTPUT_DIR', val_run / f'test_{which}']
    monkeypatch.setattr(sys, 'argv', ['test_clipreid.py', *map(str, args)])
    result = cli.test_main('test')
    curves = {name.split('/')[-1]: v for (_, name), v in _rows(val_run, f'test/{which}/').items()}
    figures = result.summary()
    assert figures and set(figures) <= set(curves)
    for name, value in figures.items():
        assert curves[name] == pytest.approx(value, abs=1e-6), name


def test_the_run_records_its_split_and_another_seed_is_refused(val_run, tmp_path, tiny_run,
                                                                monkeypatch):
    """validation_split.json lists the held-out identities; a re-ranking choice on another
    seed's split, and a --resume with another seed, stop with one line, and the refused
    resume leaves the run's config.yaml as it was."""
    record = json.loads((val_run / 'validation_split.json').read_text())
    held = state(val_run, 'pcl')['held_out']
    assert record == {'DATASETS.VAL_IDENTITIES': 2, 'SOLVER.SEED': 1234, 'held_out': held}
    args = ['--config_file', val_run / 'config.yaml', 'TEST.WEIGHT', val_run / f'{NAME}_best.pth',
            'OUTPUT_DIR', tmp_path / 'rerank', 'SOLVER.SEED', 7,
            'TEST.RE_RANKING_K1', '[2, 3]', 'TEST.RE_RANKING_K2', '[1]']
    monkeypatch.setattr(sys, 'argv', ['test_rerank_clipreid.py', *map(str, args)])
    with pytest.raises(ReIDError, match=r'comes from a run that held out other identities '
                                        r'\(DATASETS.VAL_IDENTITIES 2, SOLVER.SEED 1234, '):
        cli.test_main('test', rerank=True)

    run_dir = tmp_path / 'copy'
    shutil.copytree(val_run, run_dir)
    config = (run_dir / 'config.yaml').read_bytes()
    proc = run('train_pcl.py', ['--resume', *_opts(tiny_run, run_dir, 'SOLVER.MAX_EPOCHS',
                                                   EPOCHS + 1, 'SOLVER.SEED', 7)])
    assert proc.returncode == 2 and 'error: the training state to resume held out identities' \
        in proc.stderr
    assert (run_dir / 'config.yaml').read_bytes() == config


def test_resume_keeps_the_record_and_the_test_rows_are_written_once(tmp_path, tiny_run):
    """Two epochs, then --resume to four with a record no epoch can beat (mAP 2, epoch 1):
    it stays the best, so no best file is written after the resume and the test split's best
    figures are those of the file the first run wrote. (A state without a record: see
    test_a_tie_leaves_the_earlier_epoch_the_best_and_resume_keeps_it.)"""
    out = tmp_path / 'run'
    run_ok('train_pcl.py', _opts(tiny_run, out, 'SOLVER.MAX_EPOCHS', 2))
    first_best = _best_weights(out)
    saved = state(out, 'pcl')
    val_maps = {epoch: value for (epoch, _), value in _rows(out, 'val/mAP').items()}
    assert saved['best']['epoch'] == _best_epoch(val_maps)
    assert _tensors_equal(first_best, weights(out, saved['best']['epoch']))
    assert (2, 'test/last/epoch') in _rows(out, 'test/')
    record = {'epoch': 1, 'mAP': 2.0, 'sha256': saved['best']['sha256']}  # the file's
    torch.save({**saved, 'best': record}, out / f'{NAME}_pcl_state.pth')

    opts = _opts(tiny_run, out, 'SOLVER.MAX_EPOCHS', EPOCHS)
    stdout = run_ok('train_pcl.py', ['--resume', *opts]).stdout
    assert 'resumed pcl after epoch 2' in stdout and 'best checkpoint so far' not in stdout
    assert state(out, 'pcl')['best'] == record
    assert _tensors_equal(_best_weights(out), first_best)
    assert 'test split, best checkpoint (epoch 1, validation mAP 200.0%)' in stdout
    ends = _rows(out, 'test/')
    assert {epoch for epoch, _ in ends} == {EPOCHS}  # the first run's rows are dropped
    assert ends[(EPOCHS, 'test/last/epoch')] == EPOCHS and ends[(EPOCHS, 'test/best/epoch')] == 1


def test_without_a_validation_split_nothing_changes(tmp_path, tiny_run):
    out = tmp_path / 'plain'
    run_ok('train_pcl.py', train_opts(tiny_run, out, 'SOLVER.MAX_EPOCHS', 1))
    assert not os.path.exists(out / f'{NAME}_best.pth')
    names = {r['name'] for r in read_metrics(out / 'metrics.csv')}
    assert 'val/mAP' in names and not any(n.startswith('test/') for n in names)
    log = read_log(out)
    assert 'Validation results (' in log and 'Results on the' not in log
    assert 'best checkpoint' not in log and state(out, 'pcl')['best'] is None


# ----- in-process: the tie rule, the record in the state, the end-of-training test ---------
class _ToyTrainer(Trainer):
    stage = 'toy'


def _toy(tmp_path, monkeypatch, scores=None):
    """A Trainer of a Linear model with a validation split; evaluate_sets replaced by one
    whose mAP is `scores[weight[0, 0]]` (validation) or the weight itself (test)."""
    cfg = load_config('', ['OUTPUT_DIR', str(tmp_path), 'MODEL.NAME', 'toy'])
    model = torch.nn.Linear(2, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runtime = SimpleNamespace(device=torch.device('cpu'), amp_dtype=None, rank=0, world_size=1)
    held = SimpleNamespace(dataset=SimpleNamespace(held_out=[4, 9]))  # the split's identities
    data = SimpleNamespace(val_sets=[held], test_sets=['test'], per_dataset=False)
    trainer = _ToyTrainer(cfg, cfg.SOLVER, model, optimizer,
                          torch.optim.lr_scheduler.StepLR(optimizer, 10), runtime, data,
                          evaluator=['val evaluator'], test_evaluator=['test evaluator'])
    trainer.headings, trainer.rows = [], []
    trainer.curves = SimpleNamespace(add=lambda epoch, it, values: trainer.rows.append(
        (epoch, dict(values))))

    def fake_evaluate_sets(cfg, model, data, evaluators, runtime, split='test', heading=None,
                           prefix='val'):
        trainer.headings.append(heading)
        w = model.weight[0, 0].item()
        value = scores[w] if split == 'validation' else w
        assert evaluators == (['val evaluator'] if split == 'validation' else ['test evaluator'])
        return SimpleNamespace(mAP=value), {f'{prefix}/mAP': value}

    monkeypatch.setattr(processor.engine, 'evaluate_sets', fake_evaluate_sets)
    monkeypatch.setattr(processor.best, 'evaluate_sets', fake_evaluate_sets)
    return trainer


def _record(best):
    return {key: best[key] for key in ('epoch', 'mAP')}


def test_a_new_best_saves_the_training_state_with_its_record(tmp_path, monkeypatch):
    trainer = _toy(tmp_path, monkeypatch, {1.0: 0.5, 2.0: 0.4})
    _epoch(trainer, 1)
    saved = torch.load(tmp_path / 'toy_toy_state.pth', weights_only=True)
    assert saved['epoch'] == 1 and saved['best'] == trainer.best
    assert saved['best']['sha256'] == processor.best.file_digest(tmp_path / 'toy_best.pth')
    _epoch(trainer, 2)  # no new best: the state stays that of epoch 1
    assert torch.load(tmp_path / 'toy_toy_state.pth', weights_only=True)['epoch'] == 1


def _epoch(trainer, epoch):
    with torch.no_grad():
        trainer.model.weight.fill_(epoch)
    trainer.evaluate(epoch)


def test_a_tie_leaves_the_earlier_epoch_the_best_and_resume_keeps_it(tmp_path, monkeypatch):
    scores = {1.0: 0.5, 2.0: 0.5, 3.0: 0.6, 4.0: 0.6, 5.0: 0.59, 6.0: 0.6, 7.0: 0.61}
    trainer = _toy(tmp_path, monkeypatch, scores)
    best_file = tmp_path / 'toy_best.pth'
    for epoch in (1, 2):
        _epoch(trainer, epoch)
        assert torch.load(best_file, weights_only=True)['weight'][0, 0] == 1.0
    for epoch in (3, 4, 5):
        _epoch(trainer, epoch)
        assert torch.load(best_file, weights_only=True)['weight'][0, 0] == 3.0
    assert _record(trainer.best) == {'epoch': 3, 'mAP': 0.6}
    trainer.save_checkpoint(5)
    saved = torch.load(tmp_path / 'toy_toy_state.pth', weights_only=True)
    assert _record(saved['best']) == {'epoch': 3, 'mAP': 0.6}

    resumed = _toy(tmp_path, monkeypatch, scores)
    assert resumed.load_state(saved) == 6 and resumed.best == saved['best']
    _epoch(resumed, 6)  # ties the record: the earlier epoch stays the best
    assert torch.load(best_file, weights_only=True)['weight'][0, 0] == 3.0
    _epoch(resumed, 7)
    assert torch.load(best_file, weights_only=True)['weight'][0, 0] == 7.0
    # the best file no longer holds the record's weights (a run stopped between a new best
    # file and its state): the record starts over
    stale = _toy(tmp_path, monkeypatch, scores)
    assert stale.load_state(saved) == 6 and stale.best is None
    del saved['best']  # a state written before the record existed: no record
    for held_out, said in (([4, 8], 'held out identities [4, 8]'), (None, 'held out no identity')):
        with pytest.raises(ReIDError, match=rf'^the training state to resume {re.escape(said)} '
                                            r'for validation; this run held out identities '
                                            r'\[4, 9\]: resume with the DATASETS.VAL_IDENTITIES'):
            _toy(tmp_path, monkeypatch, scores).load_state({**saved, 'held_out': held_out})
    older = _toy(tmp_path, monkeypatch, scores)
    older.load_state(saved)
    assert older.best is None


def test_the_end_scores_last_then_best_and_keeps_the_last_weights(tmp_path, monkeypatch):
    trainer = _toy(tmp_path, monkeypatch, {1.0: 0.7, 2.0: 0.4})
    _epoch(trainer, 1)
    _epoch(trainer, 2)
    trainer.rows.clear()
    trainer.headings.clear()
    processor.best.test_at_end(trainer, 2)
    assert trainer.headings == ['test split, last checkpoint (epoch 2)',
                                'test split, best checkpoint (epoch 1, validation mAP 70.0%)']
    assert trainer.rows == [(2, {'test/last/mAP': 2.0, 'test/last/epoch': 2,
                                 'test/best/mAP': 1.0, 'test/best/epoch': 1})]
    assert trainer.model.weight[0, 0].item() == 2.0  # the last weights again


def test_the_end_scores_once_when_the_last_epoch_is_the_best(tmp_path, monkeypatch, caplog):
    trainer = _toy(tmp_path, monkeypatch, {1.0: 0.4, 2.0: 0.7})
    _epoch(trainer, 1)
    _epoch(trainer, 2)
    trainer.rows.clear()
    trainer.headings.clear()
    with caplog.at_level('INFO', logger='reid'):
        processor.best.test_at_end(trainer, 2)
    assert trainer.headings == ['test split, last checkpoint (epoch 2)']
    assert trainer.rows == [(2, {'test/last/mAP': 2.0, 'test/last/epoch': 2,
                                 'test/best/mAP': 2.0, 'test/best/epoch': 2})]
    assert 'the best checkpoint is the last one (epoch 2)' in caplog.text


def test_clipreid_prompts_and_best_checkpoint_leave_the_held_out_identities_out(tmp_path,
                                                                                 tiny_run):
    """CLIP-ReID: stage 1 learns a prompt per kept identity only (6 - 2), stage 2 validates
    on the held-out two, keeps its best checkpoint and scores the test split at its end."""
    out = tmp_path / 'clipreid'
    run_ok('train_clipreid.py', _opts(tiny_run, out, 'SOLVER.STAGE1.MAX_EPOCHS', 1,
                                      'SOLVER.STAGE2.MAX_EPOCHS', 2,
                                      'SOLVER.STAGE2.EVAL_PERIOD', 1))
    stage1 = torch.load(out / f'{NAME}_stage1_1.pth', weights_only=True)
    assert stage1['prompt_learner.cls_ctx'].shape[0] == 4
    assert weights(out, 2)['classifier.weight'].shape[0] == 4
    rows = {(r['stage'], r['epoch'], r['name']): r['value']
            for r in read_metrics(out / 'metrics.csv')}
    val_maps = {e: v for (stage, e, name), v in rows.items()
                if stage == 'stage2' and name == 'val/mAP'}
    best = _best_epoch(val_maps)
    assert sorted(val_maps) == [1, 2] and rows[('stage2', 2, 'test/best/epoch')] == best
    assert _tensors_equal(_best_weights(out), weights(out, best))
    assert not any(stage == 'stage1' and name.startswith(('val/', 'test/'))
                   for stage, _, name in rows)


def test_a_damaged_split_record_is_one_error_line(tmp_path):
    (tmp_path / 'validation_split.json').write_text('{"held_out": [1, 2')  # cut short
    cfg = load_config('', ['TEST.WEIGHT', str(tmp_path / 'w.pth')])
    with pytest.raises(ReIDError, match=r'^cannot read .*validation_split.json \(JSONDecodeError'):
        processor.best.check_split_record(cfg, SimpleNamespace(val_sets=[]))
