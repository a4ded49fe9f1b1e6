"""Record which config keys the code reads, by full path, in this process and in the entry
scripts the tests start (they import sitecustomize.py beside this file through PYTHONPATH).

Every leaf read through attribute access (``cfg.SOLVER.STAGE2.BASE_LR``, ``solver.BASE_LR``
with ``solver = cfg.SOLVER.STAGE2``) is appended, as its full dotted path, to the file named
by REID_CONFIG_TRACE. A node learns its path when it is read from its parent; the root is
the node that holds MODEL and SOLVER. Dumping or iterating a config reads nothing.
"""
import atexit
import os

from yacs.config import CfgNode

ENV = 'REID_CONFIG_TRACE'
_paths = {}
_read = set()


def _traced(self, name):
    if name not in self:
        raise AttributeError(name)
    value = self[name]
    # the root first: a new config may reuse the id of a node that no longer exists
    prefix = '' if 'MODEL' in self and 'SOLVER' in self else _paths.get(id(self))
    if prefix is not None:
        if isinstance(value, CfgNode):
            _paths[id(value)] = f'{prefix}{name}.'
        else:
            _read.add(prefix + name)
    return value


def install():
    """Start recording (when REID_CONFIG_TRACE names a file); idempotent."""
    if os.environ.get(ENV) and CfgNode.__getattr__ is not _traced:
        CfgNode.__getattr__ = _traced
        atexit.register(flush)


def flush():
    """Append what was read since the last flush to the REID_CONFIG_TRACE file."""
    if _read:
        with open(os.environ[ENV], 'a') as f:
            f.write(''.join(f'{key}\n' for key in sorted(_read)))
        _read.clear()


def read_keys(path):
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {line.strip() for line in f if line.strip()}
