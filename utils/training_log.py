"""Training curves: losses, learning rate and validation metrics of each stage.

They go to OUTPUT_DIR/metrics.csv, one value per row (stage, epoch, iteration, name, value),
which a spreadsheet or a plot script reads, and, with SOLVER.TENSORBOARD, to TensorBoard
event files under OUTPUT_DIR/tensorboard/<stage> (`tensorboard --logdir OUTPUT_DIR`). Names
are 'train/<loss>', 'train/lr' and 'val/<metric>' (metrics as fractions; the validation
split's when DATASETS.VAL_IDENTITIES holds one out, then also 'test/last/<metric>' and
'test/best/<metric>' of the test split at the stage's end); the step is the stage's
iteration. Only rank 0 writes. A stage that starts again (resumed, or a fresh run) first
drops what an earlier attempt logged after its starting iteration, in both outputs, and
metrics.csv also its end-of-training test figures (test/last/*, test/best/*: a resumed run
scores them again). TensorBoard cannot drop one tag: a finished run resumed to more epochs
keeps its earlier test figures there, at their own (earlier) step.
"""
import csv
import io
import logging
import os

from utils import distributed as du
from utils.atomic import DiskFullError, atomic_write, is_disk_full

CSV_NAME = 'metrics.csv'
CSV_COLUMNS = ('stage', 'epoch', 'iteration', 'name', 'value')
logger = logging.getLogger('reid')


def read_metrics(path):
    """The rows of a metrics.csv as dicts (epoch and iteration int, value float)."""
    with open(path, newline='') as f:
        return [dict(row, epoch=int(row['epoch']), iteration=int(row['iteration']),
                     value=float(row['value'])) for row in csv.DictReader(f)]


def _keep_rows(path, keep):
    """Rewrite path with the rows for which keep(row) is true (atomically)."""
    rows = [row for row in read_metrics(path) if keep(row)]
    with atomic_write(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _append(f, path, rows):
    """Append whole csv rows to the unbuffered binary file f: a failed write (a full disk) is
    cut back off, so the file never ends in half a row and earlier rows stay."""
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    data = text.getvalue().encode()
    size = os.fstat(f.fileno()).st_size
    try:
        done = 0
        while done < len(data):
            done += f.write(data[done:])
    except OSError as err:
        os.ftruncate(f.fileno(), size)
        if is_disk_full(err):
            raise DiskFullError(path) from None
        raise


def _summary_writer(log_dir, purge_step):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the package is in requirements.txt; a bare environment may lack it
        logger.warning('SOLVER.TENSORBOARD is on but the tensorboard package is not installed '
                       '(pip install tensorboard); curves go to %s only', CSV_NAME)
        return None
    return SummaryWriter(log_dir, purge_step=purge_step)


class TrainingLog:
    """Curves of one training stage; `start_iteration` is where it starts (0 when fresh, the
    resumed state's iteration otherwise). Does nothing off rank 0."""

    def __init__(self, cfg, stage, start_iteration=0):
        self.stage = stage
        self.enabled = du.is_main_process() and bool(cfg.OUTPUT_DIR)
        self.writer = self.csv_file = None
        if not self.enabled:
            return
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        self.csv_path = os.path.join(cfg.OUTPUT_DIR, CSV_NAME)
        fresh = start_iteration == 0
        if os.path.exists(self.csv_path):
            _keep_rows(self.csv_path, lambda row: row['stage'] != stage or (
                not fresh and row['iteration'] <= start_iteration
                and not row['name'].startswith('test/')))
        new_file = not os.path.exists(self.csv_path)
        self.csv_file = open(self.csv_path, 'ab', buffering=0)
        if new_file:
            _append(self.csv_file, self.csv_path, [CSV_COLUMNS])
        if cfg.SOLVER.TENSORBOARD:
            self.writer = _summary_writer(os.path.join(cfg.OUTPUT_DIR, 'tensorboard', stage),
                                          purge_step=0 if fresh else start_iteration + 1)

    def add(self, epoch, iteration, values):
        """Record {name: float} at (epoch, iteration)."""
        if not self.enabled:
            return
        _append(self.csv_file, self.csv_path,
                [(self.stage, epoch, iteration, name, f'{float(value):.6g}')
                 for name, value in values.items()])
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, float(value), iteration)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        if self.csv_file is not None:
            self.csv_file.close()
        self.writer = self.csv_file = None
