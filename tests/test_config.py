"""Config loading: the union tree, upstream YAMLs, overrides and unknown keys."""
import pytest

from config import INERT_UPSTREAM_KEYS, cfg as defaults, load_config
from utils.errors import ReIDError


def write(tmp_path, text):
    path = tmp_path / 'c.yml'
    path.write_text(text)
    return str(path)


def test_both_upstream_solver_layouts_exist():
    assert defaults.SOLVER.ITERS == 200 and defaults.SOLVER.STAGE1.BASE_LR == 3e-4
    assert defaults.SOLVER.STAGE2.STEPS == (40, 70)
    assert defaults.MODEL.MEMORY_MOMENTUM == 0.2 and defaults.MODEL.PCL_LOSS_WEIGHT == 1.0


def test_upstream_value_spellings_are_decoded(tmp_path):
    path = write(tmp_path, """
DATASETS:
  NAMES: ('msmt17')
  ROOT_DIR: ('../data/')
SOLVER:
  STEPS: [30, 50]
  STAGE1:
    LR_MIN: 1e-6
  STAGE2:
    BIAS_LR_FACTOR: 2
""")
    cfg = load_config(path)
    assert cfg.DATASETS.NAMES == 'msmt17' and cfg.DATASETS.ROOT_DIR == '../data/'
    assert cfg.SOLVER.STEPS == (30, 50)
    assert cfg.SOLVER.STAGE1.LR_MIN == 1e-6
    assert cfg.SOLVER.STAGE2.BIAS_LR_FACTOR == 2.0 and isinstance(cfg.SOLVER.STAGE2.BIAS_LR_FACTOR, float)


def test_command_line_overrides_come_last(tmp_path):
    path = write(tmp_path, 'MODEL:\n  SIE_CAMERA: False\n')
    cfg = load_config(path, ['MODEL.SIE_CAMERA', 'True', 'INPUT.SIZE_TRAIN', '[256, 128]',
                             'DATASETS.NAMES', "('veri')"])
    assert cfg.MODEL.SIE_CAMERA is True
    assert list(cfg.INPUT.SIZE_TRAIN) == [256, 128]
    assert cfg.DATASETS.NAMES == 'veri'
    assert cfg.is_frozen()


def test_re_ranking_parameters_take_a_number_or_a_list(tmp_path):
    path = write(tmp_path, 'TEST:\n  RE_RANKING_K1: [20, 30]\n  RE_RANKING_LAMBDA: [0, 0.3]\n')
    cfg = load_config(path)
    assert cfg.TEST.RE_RANKING_K1 == [20, 30] and cfg.TEST.RE_RANKING_LAMBDA == [0.0, 0.3]
    assert all(isinstance(v, float) for v in cfg.TEST.RE_RANKING_LAMBDA)
    cfg = load_config(path, ['TEST.RE_RANKING_K1', '50', 'TEST.RE_RANKING_K2', '[3,6]'])
    assert cfg.TEST.RE_RANKING_K1 == 50 and cfg.TEST.RE_RANKING_K2 == [3, 6]
    # on a shell: TEST.RE_RANKING_K1 "[20,50]"
    cfg = load_config('', ['TEST.RE_RANKING_K1', '[20,50]', 'TEST.RE_RANKING_LAMBDA', '1'])
    assert cfg.TEST.RE_RANKING_K1 == [20, 50] and cfg.TEST.RE_RANKING_LAMBDA == 1.0
    with pytest.raises(ReIDError, match=r'TEST\.RE_RANKING_K1.*expected int'):
        load_config('', ['TEST.RE_RANKING_K1', '[20, 0.5]'])
    with pytest.raises(ReIDError, match=r'TEST\.RE_RANKING_K2.*non-empty'):
        load_config('', ['TEST.RE_RANKING_K2', '[]'])
    with pytest.raises(ReIDError, match=r'SOLVER\.BASE_LR'):  # other keys stay single numbers
        load_config('', ['SOLVER.BASE_LR', '[0.1, 0.2]'])


@pytest.mark.parametrize('text', ['MODEL:\n  NOT_A_KEY: 1\n', 'NOPE:\n  X: 1\n'])
def test_unknown_yaml_key_names_the_key(tmp_path, text):
    with pytest.raises(ReIDError, match=r'c\.yml: unknown config key (MODEL\.NOT_A_KEY|NOPE\.X)'):
        load_config(write(tmp_path, text))


def test_unknown_command_line_key_names_the_key():
    with pytest.raises(ReIDError, match='command line: unknown config key SOLVER.NOPE'):
        load_config('', ['SOLVER.NOPE', '3'])


def test_wrong_type_and_odd_overrides_are_refused():
    with pytest.raises(ReIDError, match='MODEL.SIE_COE'):
        load_config('', ['MODEL.SIE_COE', 'abc'])
    with pytest.raises(ReIDError, match='KEY VALUE'):
        load_config('', ['MODEL.SIE_COE'])


def test_inert_upstream_keys_load_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, 'MODEL:\n  DROP_PATH: 0.1\n  COS_LAYER: False\nTEST:\n  EVAL: True\n')
    cfg = load_config(path)
    assert 'DROP_PATH' not in cfg.MODEL and 'EVAL' not in cfg.TEST
    assert 'MODEL.DROP_PATH has no effect' in caplog.text
    assert {'MODEL.DROP_PATH', 'TEST.EVAL', 'SOLVER.STAGE2.COSINE_SCALE'} <= INERT_UPSTREAM_KEYS


def test_keys_upstream_defines_but_never_reads_load_with_a_warning(caplog):
    # upstream's trees give both stages (and PCL-CLIP's flat SOLVER) both schedules' keys
    unread = ['SOLVER.STAGE1.WARMUP_FACTOR', 'SOLVER.STAGE1.WARMUP_ITERS',
              'SOLVER.STAGE1.EVAL_PERIOD', 'SOLVER.STAGE2.WARMUP_EPOCHS',
              'SOLVER.STAGE2.WARMUP_LR_INIT', 'SOLVER.STAGE2.LR_MIN', 'SOLVER.WARMUP_EPOCHS',
              'SOLVER.WARMUP_LR_INIT', 'SOLVER.LR_MIN']
    load_config('', [item for key in unread for item in (key, '1')])
    assert all(f'{key} has no effect' in caplog.text for key in unread)


def test_inert_key_with_a_value_that_would_matter_is_refused(tmp_path):
    with pytest.raises(ReIDError, match='COS_LAYER'):
        load_config(write(tmp_path, 'MODEL:\n  COS_LAYER: True\n'))


def test_missing_config_file_is_one_clear_error():
    with pytest.raises(ReIDError, match='cannot read config file nowhere.yml'):
        load_config('nowhere.yml')
