"""Shared test setup: the repository on sys.path (so a plain `pytest tests` works, not only
`python -m pytest`), one torch thread, and logging restored after every test."""
import logging
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Tiny models gain nothing from more threads, and on a busy machine threads waiting for
# each other make tests several times slower. Subprocess runs pin theirs through the
# environment (see _run_helpers / _e2e_helpers).
torch.set_num_threads(1)

_LOGGERS = ('', 'reid', 'py.warnings')


@pytest.fixture(autouse=True)
def restore_logging():
    """setup_run / setup_logger reconfigure the 'reid' and root loggers; put them back."""
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in _LOGGERS}
    capture = logging._warnings_showwarning is not None
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    logging.captureWarnings(capture)
