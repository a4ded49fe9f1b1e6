"""A device that fills up: files written through it fail with ENOSPC after `room` bytes."""
import builtins
import errno
import io
import os


class FullDisk(io.FileIO):
    room = 100

    def write(self, data):
        data = bytes(data)
        left = self.room - self.tell()
        if left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data[:left])


def full_disk_open(room):
    """An `open` whose files (binary or text) sit on a device with `room` bytes left."""
    def full_open(path, mode='r', buffering=-1, encoding=None, newline=None, **kwargs):
        if 'r' in mode and '+' not in mode:
            return builtins.open(path, mode, buffering, encoding, newline=newline, **kwargs)
        raw = FullDisk(path, mode.replace('b', '').replace('t', ''))
        raw.room = room
        if 'b' in mode:
            return raw if buffering == 0 else io.BufferedWriter(raw)
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding or 'utf-8',
                                newline=newline)

    return full_open


def fill_disk(monkeypatch, module, room=100):
    """Files that `module` opens from now on sit on a device with `room` bytes left."""
    monkeypatch.setattr(module, 'open', full_disk_open(room), raising=False)
