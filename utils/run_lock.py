"""One training run per OUTPUT_DIR at a time.

Rank 0 of a run (the only process that writes there) holds an exclusive flock on
OUTPUT_DIR/.lock for the whole run; a second run, single-process or torchrun, finds it taken
and stops before writing anything. The kernel releases a flock when its process dies, so the
file a killed run leaves behind never blocks a later run or --resume.
"""
import contextlib
import errno
import fcntl
import os
import socket
import time
import warnings

from utils import distributed as du
from utils.errors import ReIDError

LOCK_FILE = '.lock'
_held = []  # the descriptor this process holds its lock by


def _drop_in_child():
    """A forked child (a DataLoader worker) closes its copy of the lock's descriptor: the lock
    then dies with the run's process, not with the last of its workers."""
    while _held:
        os.close(_held.pop())


os.register_at_fork(after_in_child=_drop_in_child)


def _holder(fd):
    """'process PID on HOST' as the holder wrote it; it writes right after locking, so wait a
    moment for a lock taken an instant ago."""
    for _ in range(10):
        text = os.pread(fd, 200, 0).decode(errors='replace').split()
        if len(text) == 2:
            return f'process {text[0]} on {text[1]}'
        time.sleep(0.1)
    return 'a process that has not recorded itself'


@contextlib.contextmanager
def run_folder_lock(cfg):
    """Hold cfg.OUTPUT_DIR for this run (rank 0; other ranks do nothing). Raises ReIDError
    naming the folder and the holder when another run holds it."""
    if du.launch_rank() != 0:
        yield
        return
    folder = cfg.OUTPUT_DIR or '.'
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ReIDError(f'OUTPUT_DIR {folder} is a file, not a folder')
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReIDError(f'OUTPUT_DIR {folder} is in use by another training run '
                            f'({_holder(fd)}); wait for it to end or give another '
                            'OUTPUT_DIR') from None
        except OSError as err:  # a file system without locks: run unguarded rather than not
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            warnings.warn(f'cannot lock OUTPUT_DIR {folder} ({err.strerror}): a second run '
                          'started into it would not be stopped')
        else:
            record = f'{os.getpid()} {socket.gethostname()}\n'.encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        _held.append(fd)
        yield
    finally:
        if fd in _held:
            _held.remove(fd)
        os.close(fd)
