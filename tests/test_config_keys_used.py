"""Every key of the config tree is read by the code: a key that does nothing is a bug."""
import pathlib
import re

from config import cfg

ROOT = pathlib.Path(__file__).resolve().parents[1]
CODE_DIRS = ('datasets', 'model', 'loss', 'processor', 'solver', 'utils')


def leaf_keys(node, prefix=''):
    for key, value in node.items():
        if hasattr(value, 'items'):
            yield from leaf_keys(value, f'{prefix}{key}.')
        else:
            yield prefix + key


def test_every_config_key_is_read_somewhere():
    code = '\n'.join(p.read_text() for d in CODE_DIRS for p in (ROOT / d).rglob('*.py'))
    unread = [key for key in leaf_keys(cfg)
              if not re.search(r"[.'\"]" + re.escape(key.split('.')[-1]) + r"\b", code)]
    assert unread == []
