"""Shared test setup: the repository on sys.path (so a plain `pytest tests` works, not only
`python -m pytest`), one torch thread, logging restored after every test, and the check
that every config key is read.

Every key of the config tree must be read by the code, by its full path: a key that does
nothing is a bug (`SOLVER.STAGE1.STEPS` is not read because `SOLVER.STEPS` is). The reads
of this process and of every entry script the tests start are recorded (config_trace/);
after a run of the whole suite the keys nothing read fail the run.
"""
import glob
import logging
import os
import sys
import tempfile

import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS))
sys.path.insert(0, os.path.join(TESTS, 'config_trace'))

import config_reads  # noqa: E402  (tests/config_trace)

os.environ[config_reads.ENV] = os.path.join(tempfile.mkdtemp(prefix='config_reads_'), 'keys')
os.environ['PYTHONPATH'] = os.pathsep.join(
    [os.path.join(TESTS, 'config_trace')] + os.environ.get('PYTHONPATH', '').split(os.pathsep))
config_reads.install()

# Tiny models gain nothing from more threads, and on a busy machine threads waiting for
# each other make tests several times slower. Subprocess runs pin theirs through the
# environment (see _run_helpers / _e2e_helpers).
torch.set_num_threads(1)

_LOGGERS = ('', 'reid', 'py.warnings')


def _logging_state():
    return ({name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in _LOGGERS},
            logging._warnings_showwarning is not None)


_BASELINE = _logging_state()


@pytest.fixture(autouse=True)
def restore_logging():
    """setup_run / setup_logger reconfigure the 'reid' and root loggers (also inside module
    fixtures): after every test, put them back as they were when the session started."""
    yield
    loggers, capture = _BASELINE
    for name, (handlers, level, propagate) in loggers.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers = list(handlers)  # setup_logger makes root share reid's list
        logger.setLevel(level)
        logger.propagate = propagate
    logging.captureWarnings(capture)


def _leaf_keys(node, prefix=''):
    for key, value in node.items():
        if hasattr(value, 'items'):
            yield from _leaf_keys(value, f'{prefix}{key}.')
        else:
            yield prefix + key


def _whole_suite(session):
    option = session.config.option
    if option.keyword or option.markexpr or getattr(option, 'lf', False) or session.testsfailed:
        return False
    ran = {os.path.basename(str(item.path)) for item in session.items}
    return ran == {os.path.basename(p) for p in glob.glob(os.path.join(TESTS, 'test_*.py'))}


def pytest_sessionfinish(session, exitstatus):
    if exitstatus != 0 or not _whole_suite(session):
        return
    from config.defaults import _C
    config_reads.flush()
    unread = sorted(set(_leaf_keys(_C)) - config_reads.read_keys(os.environ[config_reads.ENV]))
    if unread:
        session.config.unread_config_keys = unread
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    unread = getattr(config, 'unread_config_keys', None)
    if unread:
        terminalreporter.write_line(f'FAILED: config keys no code read in the whole suite '
                                    f'(use them or remove them): {", ".join(unread)}', red=True)
