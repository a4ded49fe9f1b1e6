"""Atomic file writes: a writer that fails half-way leaves no debris and loses nothing.

`atomic_write(path)` opens a temporary file `.NAME.<pid>.tmp` beside `path`; when the block
ends without error the file is flushed, synced and renamed over `path` (an earlier `path`
stays intact until then); on any error the temporary file is removed. A full device becomes
a `DiskFullError` (a ReIDError) naming the file. `remove_stale_temp_files(folder)` removes the
temporary files that a killed process left.
"""
import contextlib
import errno
import logging
import os
import re

from utils.errors import ReIDError

logger = logging.getLogger('reid')
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_TEMP_NAME = re.compile(r'^\..+\.(\d+)\.tmp$')


class DiskFullError(ReIDError):
    """Writing `path` failed because its device (or quota) is full; nothing there changed."""

    def __init__(self, path, kept=''):
        self.path = path
        folder = os.path.dirname(path)
        earlier = (f'the earlier {os.path.basename(path)} is kept unchanged'
                   if os.path.exists(path) else 'nothing was written')
        super().__init__(f'cannot write {path}: no space left on device (ENOSPC); {earlier}'
                         f'{"; " + kept if kept else ""}. Free space in {folder} and run again')


def temp_path(path):
    """The temporary file atomic_write uses for path (in this process)."""
    return os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.{os.getpid()}.tmp')


def is_disk_full(err):
    """True when err, or an error it was raised from or during, says the device is full.
    torch.save reports a failed write as 'RuntimeError: ... unexpected pos', with the
    OSError(ENOSPC) of the file object as its context."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def atomic_write(path, mode='wb', **open_kwargs):
    """with atomic_write(path) as f: write to f; path appears complete or not at all."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if is_disk_full(err):
            raise DiskFullError(path) from None
        raise


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(folder):
    """Remove the temporary files of atomic_write in folder whose process is gone (killed
    while saving); returns their paths."""
    removed = []
    names = os.listdir(folder) if os.path.isdir(folder) else []
    for name in sorted(names):
        match = _TEMP_NAME.match(name)
        if not match or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):  # another rank may remove it first
            os.remove(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
    if removed:
        logger.warning('removed %d temporary file(s) left by a run stopped while saving: %s',
                       len(removed), ', '.join(os.path.basename(p) for p in removed))
    return removed
