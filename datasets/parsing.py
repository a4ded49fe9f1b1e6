"""Helpers shared by the dataset loaders: finding folders, parsing file names and list files.

Every failure is a ReIDError naming the folder, or the file and line, at fault.
"""
import os
import os.path as osp
import re

from utils.errors import ReIDError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
# '<pid>_c<camera>...' as in Market-1501, DukeMTMC-reID and VeRi-776 (pid may be -1)
PID_CAM_PATTERN = re.compile(r'^(-?\d+)_c(\d+)')


def find_dataset_dir(root, candidates, dataset):
    """The first of `candidates` (folder names, upstream spelling first) that exists under root."""
    for name in candidates:
        path = osp.join(root, name)
        if osp.isdir(path):
            return path
    tried = ', '.join(osp.join(root, name) for name in candidates)
    raise ReIDError(f'{dataset}: missing folder {osp.join(root, candidates[0])} '
                    f'(DATASETS.ROOT_DIR={root!r}; tried {tried})')


def require_dir(path):
    if not osp.isdir(path):
        raise ReIDError(f'missing folder: {path}')
    return path


def require_file(path):
    if not osp.isfile(path):
        raise ReIDError(f'missing file: {path}')
    return path


def resolve_file(path, bases, key):
    """A config-given file: absolute as is; relative ones under each base, then the cwd."""
    if not path:
        raise ReIDError(f'{key} is not set')
    tried = [path] if osp.isabs(path) else [osp.join(b, path) for b in bases] + [path]
    for candidate in tried:
        if osp.isfile(candidate):
            return candidate
    raise ReIDError(f'{key}: missing file {tried[0]}'
                    + (f' (also tried {", ".join(tried[1:])})' if len(tried) > 1 else ''))


def list_images(folder):
    """Sorted image paths directly inside folder (which must exist)."""
    require_dir(folder)
    return sorted(osp.join(folder, name) for name in os.listdir(folder)
                  if name.lower().endswith(IMAGE_EXTENSIONS))


def parse_pid_cam(path, example, pattern=PID_CAM_PATTERN):
    """(pid, 0-based camera id) from a name like 0002_c1s1_000451_03.jpg."""
    match = pattern.search(osp.basename(path))
    if match is None or int(match.group(2)) < 1:
        raise ReIDError(f'cannot parse file name {path} (expected a name like {example})')
    return int(match.group(1)), int(match.group(2)) - 1


def parse_folder(folder, example, drop_pids=(-1,)):
    """Records (path, pid, camid, 0) of a folder of '<pid>_c<cam>...' images, minus drop_pids."""
    records = []
    for path in list_images(folder):
        pid, camid = parse_pid_cam(path, example)
        if pid not in drop_pids:
            records.append((path, pid, camid, 0))
    return records


def read_list(path):
    """(line number, fields) for each non-blank line of a whitespace-separated list file."""
    require_file(path)
    with open(path) as f:
        try:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if fields:
                    yield lineno, fields
        except UnicodeDecodeError as err:
            raise ReIDError(f'{path} is not a text list file: {err}') from None


def parse_int(text, path, lineno, what):
    """An integer field; '12.0' is accepted as 12 (the animal lists write labels as floats)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value.is_integer():
        raise ReIDError(f'{path}, line {lineno}: {what} {text!r} is not an integer')
    return int(value)


def list_field(fields, index, path, lineno, what):
    if len(fields) <= index:
        raise ReIDError(f'{path}, line {lineno}: missing {what} (expected '
                        f'"<image path> <pid> ...", got {" ".join(fields)!r})')
    return fields[index]


def relabel(records):
    """Map pids to 0..N-1 in sorted order (train split)."""
    mapping = {pid: label for label, pid in enumerate(sorted({r[1] for r in records}))}
    return [(path, mapping[pid], camid, viewid) for path, pid, camid, viewid in records]


def read_records(list_path, image_dir, parse_line, check_files=True):
    """Records (image_dir/<rel>, pid, camid, 0) of a list file.

    parse_line(fields, list_path, lineno) -> (rel_path, pid, camid). With check_files, an image
    that is not on disk stops with the list file and line (with ON_BAD_IMAGE 'skip' the
    dataset skips such images instead).
    """
    records = []
    for lineno, fields in read_list(list_path):
        rel, pid, camid = parse_line(fields, list_path, lineno)
        path = osp.join(image_dir, rel)
        if check_files and not osp.isfile(path):
            raise ReIDError(f'{list_path}, line {lineno}: image not found: {path}')
        records.append((path, pid, camid, 0))
    return records
