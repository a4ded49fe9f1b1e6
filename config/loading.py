"""Build the run's configuration from defaults, a YAML file and KEY VALUE overrides."""
import argparse
import ast
import logging
import math

import yaml
from yacs.config import CfgNode as CN

from utils.errors import ReIDError

from .defaults import _C

logger = logging.getLogger(__name__)

_STAGES = ('SOLVER.', 'SOLVER.STAGE1.', 'SOLVER.STAGE2.')
# Keys of the upstream trees that this framework has no use for. Upstream YAMLs set them,
# so they are accepted, dropped with a warning, and never silently pretend to work.
INERT_UPSTREAM_KEYS = frozenset(
    ['MODEL.DROP_PATH', 'MODEL.DROP_OUT', 'MODEL.ATT_DROP_RATE', 'MODEL.TRANSFORMER_TYPE',
     'MODEL.COS_LAYER', 'DATASETS.ATTR_PATH', 'DATASETS.ATTR_NUM', 'TEST.EVAL',
     'SOLVER.STAGE1.WARMUP_METHOD']  # stage 1's cosine schedule has no warmup method
    # each upstream stage also carries the other schedule's keys, which it never reads
    + ['SOLVER.STAGE1.' + key for key in ('WARMUP_FACTOR', 'WARMUP_ITERS', 'EVAL_PERIOD')]
    + [stage + key for stage in ('SOLVER.', 'SOLVER.STAGE2.')
       for key in ('WARMUP_EPOCHS', 'WARMUP_LR_INIT', 'LR_MIN')]
    + [stage + key for stage in _STAGES for key in (
        'COSINE_MARGIN', 'COSINE_SCALE', 'CLUSTER_MARGIN', 'RANGE_K', 'RANGE_MARGIN',
        'RANGE_ALPHA', 'RANGE_BETA', 'RANGE_LOSS_WEIGHT')])
# Inert keys that would change results if they held these values: refuse them.
_UNSUPPORTED_VALUES = {'MODEL.COS_LAYER': (True, 'True')}
# Keys that take a number or a non-empty list of numbers of the default's type (a sweep).
NUMBER_OR_LIST_KEYS = frozenset(
    ['TEST.RE_RANKING_K1', 'TEST.RE_RANKING_K2', 'TEST.RE_RANKING_LAMBDA'])
# Keys naming datasets: DATASETS.NAMES is one name or a tuple of several (a one-item list is
# the name, as upstream's NAMES: ('market1501')); DATASETS.TEST_NAMES is always a tuple.
DATASET_LIST_KEYS = frozenset(['DATASETS.NAMES', 'DATASETS.TEST_NAMES'])


def _dataset_names(name, value):
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(
            isinstance(n, str) and n.strip() for n in names):
        raise ReIDError(f'config key {name}: expected a dataset name or a list of names, '
                        f'got {value!r}')
    names = tuple(n.strip() for n in names)
    if name == 'DATASETS.TEST_NAMES':
        return names
    if not names:
        raise ReIDError(f'config key {name}: expected a dataset name, got {value!r}')
    return names[0] if len(names) == 1 else names


def _flatten(tree, prefix=''):
    for key, value in tree.items():
        name = prefix + str(key)
        if isinstance(value, dict):
            yield from _flatten(value, name + '.')
        else:
            yield name, value


def _literal(value):
    if isinstance(value, str):  # as yacs: "('market1501')" -> 'market1501', "1e-6" -> 1e-06
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    return value


def _coerce(name, value, default):
    """Cast an override to the type of its default, as yacs does, with int -> float allowed."""
    value = _literal(value)
    if name in DATASET_LIST_KEYS:
        return _dataset_names(name, value)
    if name in NUMBER_OR_LIST_KEYS:
        number = _C
        for part in name.split('.'):
            number = number[part]  # the shipped default: the type of every item
        if isinstance(value, (list, tuple)):
            if not value:
                raise ReIDError(f'config key {name}: expected a number or a non-empty list, '
                                'got []')
            return [_coerce(name + '[]', v, number) for v in value]
        default = number
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(value, str) and value.lower() in ('true', 'false'):
            value = value.lower() == 'true'
    elif isinstance(default, float) and isinstance(value, (int, str)):
        try:
            value = float(value)
        except ValueError:
            pass
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        value = type(default)(value)
    elif isinstance(default, str) and isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]  # upstream writes NAMES: ('market1501')
    elif isinstance(default, str) and value is not None and not isinstance(value, str):
        value = str(value)
    if default is not None and type(value) is not type(default) and not (
            isinstance(default, (list, tuple)) and isinstance(value, (list, tuple))):
        raise ReIDError(f'config key {name}: expected {type(default).__name__}, '
                        f'got {value!r}')
    return value


def _apply(cfg, pairs, source, origin):
    """Set each (name, value) in cfg; origin[name] records the source that set it."""
    for name, value in pairs:
        if name in INERT_UPSTREAM_KEYS:
            if value in _UNSUPPORTED_VALUES.get(name, ()):
                raise ReIDError(f'{source}: {name}={value} is not supported by this framework')
            logger.warning('%s: %s has no effect in this framework; ignored', source, name)
            continue
        node, *path, leaf = [cfg] + name.split('.')
        for part in path:
            if part not in node or not isinstance(node[part], CN):
                raise ReIDError(f'{source}: unknown config key {name}')
            node = node[part]
        if value is None and isinstance(node.get(leaf), CN):
            continue  # an empty section, e.g. 'DATASETS:' followed only by comments
        if leaf not in node or isinstance(node[leaf], CN):
            raise ReIDError(f'{source}: unknown config key {name}')
        try:
            node[leaf] = _coerce(name, value, node[leaf])
        except ReIDError as err:
            raise ReIDError(f'{source}: {err}') from None
        origin[name] = source


_PERIODS = ('CHECKPOINT_PERIOD', 'LOG_PERIOD', 'EVAL_PERIOD')
# Keys that count something and must be at least 1 (periods are divisors: 0 would fail only
# when first used, possibly after a whole epoch of training).
AT_LEAST_ONE = tuple(
    [stage + key for stage in _STAGES for key in _PERIODS + ('IMS_PER_BATCH',)
     if stage + key not in INERT_UPSTREAM_KEYS]
    + ['TEST.IMS_PER_BATCH', 'DATALOADER.NUM_INSTANCE'])
AT_LEAST_ZERO = ('DATALOADER.NUM_WORKERS', 'DATASETS.VAL_IDENTITIES')


def _get(cfg, name):
    """cfg's value at a dotted name, by item access (tests trace attribute reads as uses)."""
    for part in name.split('.'):
        cfg = cfg[part]
    return cfg


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_values(cfg, origin=None):
    """Refuse values no run can use, naming the key and where it was set (YAML file or
    command line)."""
    def fail(name, message):
        where = (origin or {}).get(name)
        raise ReIDError(f'{where + ": " if where else ""}config key {name} {message}')

    for name in AT_LEAST_ONE:
        if _get(cfg, name) < 1:
            fail(name, f'must be at least 1, not {_get(cfg, name)}')
    for name in AT_LEAST_ZERO:
        if _get(cfg, name) < 0:
            fail(name, f'must be 0 or more, not {_get(cfg, name)}')
    for name in ('INPUT.SIZE_TRAIN', 'INPUT.SIZE_TEST'):
        size = _get(cfg, name)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                     for v in size):
            fail(name, f'must be two positive integers [height, width], not {list(size)}')
    for name in ('INPUT.PIXEL_MEAN', 'INPUT.PIXEL_STD'):
        values = _get(cfg, name)
        if len(values) != 3 or not all(_is_number(v) for v in values):
            fail(name, f'must be three numbers (one per RGB channel), not {list(values)}')
    std = _get(cfg, 'INPUT.PIXEL_STD')
    if any(v <= 0 for v in std):
        fail('INPUT.PIXEL_STD', f'must be positive (images are divided by it), not {list(std)}')
    budget = _get(cfg, 'TEST.MEMORY_BUDGET')
    if not _is_number(budget) or budget < 0:
        fail('TEST.MEMORY_BUDGET', f'must be a number of GiB, 0 for auto, not {budget}')
    for name in ('SOLVER.LAYER_DECAY', 'SOLVER.STAGE2.LAYER_DECAY'):
        decay = _get(cfg, name)
        if not _is_number(decay) or not 0 < decay <= 1:
            fail(name, f'must be in (0, 1] (1.0 = no layer-wise LR decay), not {decay}')


def load_config(config_file='', opts=()):
    """Defaults, then the YAML file, then KEY VALUE pairs; returns a frozen CfgNode."""
    cfg = _C.clone()
    origin = {}
    if config_file:
        try:
            with open(config_file) as f:
                tree = yaml.safe_load(f) or {}
        except OSError as err:
            raise ReIDError(f'cannot read config file {config_file}: {err.strerror}') from None
        except yaml.YAMLError as err:
            raise ReIDError(f'config file {config_file} is not valid YAML: {err}') from None
        _apply(cfg, _flatten(tree), config_file, origin)
    if len(opts) % 2:
        raise ReIDError(f'overrides must be KEY VALUE pairs; {opts[-1]} has no value')
    _apply(cfg, zip(opts[0::2], opts[1::2]), 'command line', origin)
    check_values(cfg, origin)
    cfg.freeze()
    return cfg


def is_config_key(name):
    """True when `name` is a key of the config tree (e.g. 'TEST.WEIGHT', 'OUTPUT_DIR')."""
    node = _C
    for part in str(name).split('.'):
        if not isinstance(node, CN) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, CN)


def make_parser(description, resume=False):
    """The options every script shares: --config_file FILE (and --resume for training).
    Scripts add their own options; KEY VALUE overrides may stand anywhere on the line."""
    parser = argparse.ArgumentParser(
        description=description, usage='%(prog)s [--config_file FILE] [options] [KEY VALUE ...]',
        epilog='KEY VALUE pairs override config keys (e.g. OUTPUT_DIR logs/run1); options may '
               'come before or after them.')
    parser.add_argument('--config_file', default='',
                        help='a YAML config file (also OUTPUT_DIR/config.yaml of a run)')
    if resume:
        parser.add_argument('--resume', action='store_true',
                            help='continue from the latest training state in OUTPUT_DIR '
                                 '(SOLVER.RESUME names a file instead)')
    parser.add_argument('--local_rank', type=int, default=0, help=argparse.SUPPRESS)
    return parser


def _overrides(rest, parser):
    """The KEY VALUE pairs argparse left over; an option it does not know stops here, rather
    than being taken for a config key."""
    for key in rest[0::2]:
        if key.startswith('-') and not key.lstrip('-').replace('.', '', 1).isdigit():
            if key.split('=')[0] == '--resume':
                raise ReIDError(f'{parser.prog} does not train, so it takes no --resume (it '
                                'evaluates TEST.WEIGHT); --resume belongs to the train scripts')
            raise ReIDError(f'{parser.prog}: unknown option {key} (see --help)')
    return list(rest)


def parse_args(description, resume=False, parser=None, argv=None):
    """Parse --config_file FILE, the script's options and KEY VALUE overrides (args.opts).

    `resume`: offer --resume (train scripts); `parser`: a parser from make_parser with the
    script's own options added."""
    parser = parser or make_parser(description, resume)
    args, rest = parser.parse_known_args(argv)
    args.opts = _overrides(rest, parser)
    return args
