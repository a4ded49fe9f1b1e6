"""Fine-tune the CLIP image encoder with ID and triplet losses (baseline).

    python train.py --config_file configs/... [KEY VALUE ...]
"""
from processor.cli import train_main
from utils.errors import cli_main

if __name__ == '__main__':
    cli_main(train_main)('baseline', 'Fine-tune the CLIP image encoder with ID and triplet losses (baseline)')
