"""Evaluate a checkpoint with its dataset's protocol.

    python test_clipreid.py --config_file configs/... TEST.WEIGHT path/to/ViT-B-16_60.pth
"""
from processor.cli import test_main
from utils.errors import cli_main

if __name__ == '__main__':
    cli_main(test_main)('Evaluate a re-ID checkpoint')
