from .defaults import _C as cfg
from .loading import INERT_UPSTREAM_KEYS, load_config, parse_args

__all__ = ['cfg', 'load_config', 'parse_args', 'INERT_UPSTREAM_KEYS']
