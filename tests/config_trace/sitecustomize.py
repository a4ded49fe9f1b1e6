"""Started by the entry scripts the tests run: record their config reads (see config_reads.py)."""
import os
import sys

if os.environ.get('REID_CONFIG_TRACE'):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import config_reads  # noqa: E402  (this folder's)
    config_reads.install()
