from .defaults import _C as cfg
from .loading import INERT_UPSTREAM_KEYS, is_config_key, load_config, make_parser, parse_args

__all__ = ['cfg', 'load_config', 'parse_args', 'make_parser', 'is_config_key',
           'INERT_UPSTREAM_KEYS']
