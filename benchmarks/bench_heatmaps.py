"""Heat-map speed: 10 queries with their top-10 each (processor.heatmaps.HeatMapper), against
extracting the features of the same 110 images.

    python benchmarks/bench_heatmaps.py                    # ViT-B-16 at 256x128, CPU
    python benchmarks/bench_heatmaps.py --model RN50 --device cuda

The CLIP weights are random with the real architecture's sizes (benchmarks/bench_train.py
writes them once under --data): speed does not depend on the values. The pictures are
random 256 x 128 images written under --data. Each query's call computes the read layer's
activations of its 11 images without gradients, then the rest of the network with them;
the feature row runs processor.FeatureExtractor's forward on the same 110 images.
"""
import argparse
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pictures(folder, n, size=(256, 128)):
    import numpy as np
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(os.path.join(folder, f'{i:03d}.png'))
        if not os.path.exists(paths[-1]):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='ViT-B-16', choices=('ViT-B-16', 'RN50'))
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--queries', type=int, default=10)
    parser.add_argument('--topk', type=int, default=10)
    parser.add_argument('--data', default=os.path.join(REPO, 'output', 'bench_data'))
    args = parser.parse_args()
    import torch
    from bench_train import random_weights
    from config import load_config
    from model import make_model
    from processor.feature_extractor import FeatureExtractor
    from processor.heatmaps import HeatMapper
    from utils.checkpoint import save_weights

    os.makedirs(args.data, exist_ok=True)
    weights = random_weights(args.model, args.data)
    opts = ['MODEL.PRETRAIN_PATH', weights, 'MODEL.NAME', args.model, 'MODEL.METHOD', 'pcl',
            'MODEL.DEVICE', args.device, 'INPUT.SIZE_TRAIN', '[256, 128]',
            'INPUT.SIZE_TEST', '[256, 128]', 'TEST.IMS_PER_BATCH', '64',
            'DATALOADER.NUM_WORKERS', '0']
    reid = os.path.join(args.data, f'reid_{args.model}.pth')
    if not os.path.exists(reid):
        torch.manual_seed(0)
        save_weights(make_model(load_config('', opts), 100, 1, 1), reid)
    extractor = FeatureExtractor('', reid, opts)
    mapper = HeatMapper(extractor.model, extractor.cfg, extractor.device)
    per = args.topk + 1
    paths = pictures(os.path.join(args.data, 'pictures_256x128'), args.queries * per)
    mapper(paths[0], paths[1:per])  # warm-up
    extractor(paths[:per])

    def timed(work):
        if extractor.device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        if extractor.device.type == 'cuda':
            torch.cuda.synchronize()
        return time.perf_counter() - start

    heat = timed(lambda: [mapper(paths[q * per], paths[q * per + 1:(q + 1) * per])
                          for q in range(args.queries)])
    feats = timed(lambda: extractor(paths))
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'{args.model} 256x128 on {args.device} ({platform.processor() or platform.machine()},'
          f' {torch.get_num_threads()} torch threads, load average {load:.2f})')
    print(f'heat maps of {args.queries} queries x top-{args.topk} ({len(paths)} images): '
          f'{heat:.2f} s; features of the same images: {feats:.2f} s '
          f'({heat / feats:.2f}x)')


if __name__ == '__main__':
    main()
