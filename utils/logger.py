"""The project's logger: console on every rank's main process, plus a file in the output folder."""
import logging
import os
import sys

LOGGER_NAME = 'reid'
# logger.info(..., extra=FILE_ONLY) writes to the log file and not to the console.
FILE_ONLY = {'file_only': True}


def setup_logger(output_dir='', log_name='train_log.txt', rank=0):
    """Configure the 'reid' logger once per run; only rank 0 writes to console and file."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG if rank == 0 else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if rank != 0:
        return logger
    fmt = logging.Formatter('%(asctime)s %(name)s %(levelname)s: %(message)s')
    console = logging.StreamHandler(stream=sys.stdout)
    console.setFormatter(fmt)
    console.addFilter(lambda record: not getattr(record, 'file_only', False))
    logger.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, log_name), mode='a')
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    # Warnings from other modules (e.g. config loading) end up in the same places.
    root = logging.getLogger()
    root.handlers = list(logger.handlers)  # a copy: the two loggers must not share one list
    root.setLevel(logging.INFO)
    return logger


def get_logger():
    return logging.getLogger(LOGGER_NAME)
