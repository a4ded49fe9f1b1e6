"""Evaluate a checkpoint with k-reciprocal re-ranking (TEST.RE_RANKING forced on).

    python test_rerank_clipreid.py --config_file configs/... TEST.WEIGHT path/to/RN50_2.pth
"""
from processor.cli import test_main
from utils.errors import cli_main

if __name__ == '__main__':
    cli_main(test_main)('Evaluate a re-ID checkpoint with re-ranking', rerank=True)
