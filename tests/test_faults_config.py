"""Config values no run can use stop at loading, naming the key and where it was set."""
import pytest

from config import load_config
from utils.errors import ReIDError

PERIODS = ['SOLVER.CHECKPOINT_PERIOD', 'SOLVER.EVAL_PERIOD', 'SOLVER.LOG_PERIOD',
           'SOLVER.STAGE1.CHECKPOINT_PERIOD', 'SOLVER.STAGE1.LOG_PERIOD',
           'SOLVER.STAGE2.CHECKPOINT_PERIOD', 'SOLVER.STAGE2.EVAL_PERIOD',
           'SOLVER.STAGE2.LOG_PERIOD']
BATCHES = ['SOLVER.IMS_PER_BATCH', 'SOLVER.STAGE1.IMS_PER_BATCH',
           'SOLVER.STAGE2.IMS_PER_BATCH', 'TEST.IMS_PER_BATCH', 'DATALOADER.NUM_INSTANCE']


@pytest.mark.parametrize('key', PERIODS + BATCHES)
@pytest.mark.parametrize('value', ['0', '-2'])
def test_periods_and_batch_sizes_below_one_are_refused(key, value):
    with pytest.raises(ReIDError, match=rf'command line: config key {key} must be at least 1, '
                                        rf'not {value}'):
        load_config('', [key, value])


def test_a_bad_value_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / 'run.yml'
    path.write_text('SOLVER:\n  STAGE2:\n    EVAL_PERIOD: 0\n')
    with pytest.raises(ReIDError, match=r'run\.yml: config key SOLVER\.STAGE2\.EVAL_PERIOD'):
        load_config(str(path))
    # values are checked once the command line has had its say
    cfg = load_config(str(path), ['SOLVER.STAGE2.EVAL_PERIOD', '5'])
    assert cfg.SOLVER.STAGE2.EVAL_PERIOD == 5


def test_negative_workers_are_refused_and_zero_is_fine():
    with pytest.raises(ReIDError, match='DATALOADER.NUM_WORKERS must be 0 or more, not -1'):
        load_config('', ['DATALOADER.NUM_WORKERS', '-1'])
    assert load_config('', ['DATALOADER.NUM_WORKERS', '0']).DATALOADER.NUM_WORKERS == 0


@pytest.mark.parametrize('key', ['INPUT.SIZE_TRAIN', 'INPUT.SIZE_TEST'])
@pytest.mark.parametrize('value', ['[256]', '[256, 128, 3]', '[0, 128]', '[256, -1]',
                                   '[256.5, 128]', "['a', 'b']", '[True, 128]'])
def test_image_sizes_must_be_two_positive_ints(key, value):
    with pytest.raises(ReIDError, match=rf'{key} must be two positive integers'):
        load_config('', [key, value])


@pytest.mark.parametrize('key', ['INPUT.PIXEL_MEAN', 'INPUT.PIXEL_STD'])
@pytest.mark.parametrize('value', ['[0.5, 0.5]', '[0.5, 0.5, 0.5, 0.5]', "[0.5, 'x', 0.5]"])
def test_normalisation_needs_three_numbers(key, value):
    with pytest.raises(ReIDError, match=rf'{key} must be three numbers'):
        load_config('', [key, value])


def test_normalisation_values_must_be_finite(tmp_path):
    path = tmp_path / 'n.yml'
    path.write_text('INPUT: {PIXEL_MEAN: [0.5, .nan, 0.5]}\n')
    with pytest.raises(ReIDError, match=r'n\.yml: config key INPUT\.PIXEL_MEAN must be three'):
        load_config(str(path))


@pytest.mark.parametrize('std', ['[0.2, 0, 0.2]', '[0.2, 0.2, -0.1]'])
def test_a_std_of_zero_is_refused(std):
    with pytest.raises(ReIDError, match=r'INPUT\.PIXEL_STD must be positive'):
        load_config('', ['INPUT.PIXEL_STD', std])
    assert load_config('', ['INPUT.PIXEL_STD', '[1, 1, 1]']).INPUT.PIXEL_STD == [1, 1, 1]


def test_a_wrong_type_names_the_yaml_file_and_the_key(tmp_path):
    path = tmp_path / 'x.yml'
    path.write_text("SOLVER: {MAX_EPOCHS: 'abc'}\n")
    with pytest.raises(ReIDError, match=r'x\.yml: config key SOLVER\.MAX_EPOCHS: expected int'):
        load_config(str(path))
    with pytest.raises(ReIDError, match=r'command line: config key SOLVER\.MAX_EPOCHS'):
        load_config('', ['SOLVER.MAX_EPOCHS', 'abc'])


@pytest.mark.parametrize('value', ['-1', 'inf', 'nan'])
def test_a_memory_budget_below_zero_or_not_finite_is_refused(value):
    with pytest.raises(ReIDError, match='config key TEST.MEMORY_BUDGET must be a number of GiB'):
        load_config('', ['TEST.MEMORY_BUDGET', value])
    assert load_config('', ['TEST.MEMORY_BUDGET', '2']).TEST.MEMORY_BUDGET == 2
