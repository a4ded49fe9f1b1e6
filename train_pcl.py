"""Train PCL-CLIP (prototypical contrastive fine-tuning).

    python train_pcl.py --config_file configs/... [KEY VALUE ...]
"""
from processor.cli import train_main
from utils.errors import cli_main

if __name__ == '__main__':
    cli_main(train_main)('pcl', 'Train PCL-CLIP (prototypical contrastive fine-tuning)')
