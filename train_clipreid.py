"""Train CLIP-ReID (stage 1: prompts, stage 2: image encoder).

    python train_clipreid.py --config_file configs/... [KEY VALUE ...]
"""
from processor.cli import train_main
from utils.errors import cli_main

if __name__ == '__main__':
    cli_main(train_main)('clipreid', 'Train CLIP-ReID (stage 1: prompts, stage 2: image encoder)')
