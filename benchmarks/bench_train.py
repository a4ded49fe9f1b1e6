"""Training speed and peak memory: a short CLIP-ReID stage-2 run and a short PCL run.

    python benchmarks/bench_train.py                      # GPU: ViT-B-16, 256x128, batch 64
    python benchmarks/bench_train.py --model tiny --size 64 32 --batch 32 --iters 30   # CPU

Each method runs the project's own trainer (processor/) for --warmup + --iters batches of
generated images (datasets/demo_data.py, written once under --data), in a fresh process,
so its peak memory is its own: torch.cuda.max_memory_allocated on a GPU, the process's
peak resident set (getrusage maxrss) on the CPU. samples/s counts the --iters batches after
the --warmup ones, data loading included. CLIP-ReID stage 1 is skipped (stage 2 is where the
time goes); PCL's per-epoch centroid memory is built before the timed batches.

Without --weights, OpenAI's file in the usual cache (~/.cache/clip) is used if present, else
random weights with the real architecture's sizes in OpenAI's layout (written once under
--data): speed and memory do not depend on the values.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# OpenAI's published sizes, as model.clip_backbone.infer_clip_arch reads them off the weights.
_TEXT = dict(context_length=77, vocab_size=49408, text_width=512, text_heads=8, text_layers=12)
ARCHS = {
    'ViT-B-16': dict(embed_dim=512, vision_layers=12, vision_width=768, vision_patch_size=16,
                     grid_size=14, **_TEXT),
    'ViT-B-32': dict(embed_dim=512, vision_layers=12, vision_width=768, vision_patch_size=32,
                     grid_size=7, **_TEXT),
    'RN50': dict(embed_dim=1024, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, grid_size=7, **_TEXT),
}
_IMAGES_PER_ID = 10  # training images per generated identity, at least (demo_data: 4 cameras x 3)
CONFIGS = {'clipreid': ('person/vit_clipreid.yml', 'person/cnn_clipreid.yml'),
           'pcl': ('pcl/market1501.yml', 'pcl/market1501.yml')}


def random_weights(name, folder):
    """Path of random CLIP weights of `name`'s sizes ('tiny': model.tiny_clip's ViT)."""
    path = os.path.join(folder, f'random_{name}.pt')
    if not os.path.exists(path):
        from model.tiny_clip import save_tiny_clip
        if name == 'tiny':
            return save_tiny_clip(path, 'vit')
        import torch
        from model.clip_backbone import ClipArch, build_clip
        torch.manual_seed(0)
        state = {k: v.half() for k, v in build_clip(ClipArch(**ARCHS[name])).state_dict().items()}
        torch.save(state, path + '.part')
        os.replace(path + '.part', path)
    return path


def pick_weights(args):
    """--weights, else OpenAI's file in the usual cache, else random weights of the sizes."""
    if args.weights:
        return args.weights
    from model.clip_weights import cache_path
    if args.model != 'tiny' and os.path.isfile(cache_path(args.model)):
        return cache_path(args.model)
    return random_weights(args.model, args.data)


def data_root(args):
    """Generated Market1501-layout images: enough for every measured batch in one pass over
    the training set (steady state: no pass boundary, where the loader's pipeline refills,
    inside the timed window), and at least one PK batch."""
    from datasets.demo_data import generate
    batches = args.warmup + args.iters
    train_ids = -(-batches * args.batch // _IMAGES_PER_ID)
    ids = max(args.ids, 2 * train_ids, 2 * -(-args.batch // 4))
    root = os.path.join(args.data, f'market_{args.size[0]}x{args.size[1]}_{ids}')
    generate(root, ('market1501',), ids=ids, size=tuple(args.size))
    return root


def make_cfg(args, method, root, weights):
    from config import load_config
    h, w = args.size
    rn = args.model.startswith('RN')
    solver = 'SOLVER.STAGE2.' if method == 'clipreid' else 'SOLVER.'
    opts = ['MODEL.NAME', args.model, 'MODEL.PRETRAIN_PATH', weights, 'MODEL.DEVICE', args.device,
            'DATASETS.ROOT_DIR', root, 'INPUT.SIZE_TRAIN', f'[{h}, {w}]',
            'INPUT.SIZE_TEST', f'[{h}, {w}]', 'DATALOADER.NUM_WORKERS', str(args.workers),
            solver + 'IMS_PER_BATCH', str(args.batch), solver + 'MAX_EPOCHS', '1',
            'SOLVER.ITERS', str(args.warmup + args.iters),
            'SOLVER.AMP', args.amp, 'OUTPUT_DIR', os.path.join(args.data, 'output')]
    return load_config(os.path.join(REPO, 'configs', CONFIGS[method][rn]), opts)


def loader_rate(loader, args):
    """samples/s of the training loader alone over the timed batches after the warm-up ones:
    the most the trainer could reach with this data pipeline."""
    from processor.batches import EpochBatches
    stamps = [time.perf_counter()]
    for _ in EpochBatches(loader, 1, limit=args.warmup + args.iters):
        stamps.append(time.perf_counter())
    return args.batch * args.iters / (stamps[-1] - stamps[args.warmup])


def measure(args, method):
    """Run one method in this process; returns a dict of figures."""
    import torch
    from processor import recipes
    from processor.cli import _build
    from processor.batches import EpochBatches
    from processor.clipreid import ImageTrainer, PromptTrainer
    from processor.engine import Trainer
    from processor.pcl import PCLTrainer
    from utils.runtime import setup_run

    root = data_root(args)
    cfg = make_cfg(args, method, root, args.weights)
    runtime = setup_run(cfg, 'bench_log.txt')
    data, model = _build(cfg, runtime)
    loader_samples_per_s = loader_rate(data.train_loader, args)
    cuda = runtime.device.type == 'cuda'
    stamps, n = [], args.warmup + args.iters

    def sync_time():
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def timed(step):
        def wrapper(self, batch):
            stamps.append(sync_time())
            return step(self, batch)
        return wrapper

    for cls in (ImageTrainer, PCLTrainer):
        cls.train_step = timed(cls.train_step)
    PromptTrainer.run = lambda self, start_epoch=1: None  # stage 1 is not measured
    ImageTrainer.batches = lambda self, epoch: EpochBatches(self.data.train_loader, epoch, limit=n)
    Trainer.end_epoch = lambda self, epoch: stamps.append(sync_time())  # no eval, no checkpoint
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train = recipes.train_clipreid if method == 'clipreid' else recipes.train_pcl
    train(cfg, model, data, runtime)
    assert len(stamps) == n + 1, f'expected {n} timed batches, got {len(stamps) - 1}'
    seconds = stamps[-1] - stamps[args.warmup]
    peak = (torch.cuda.max_memory_allocated() if cuda else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / (1 << 30)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {'method': method, 'params_m': round(params, 1),
            'samples_per_s': round(args.batch * args.iters / seconds, 2),
            'loader_samples_per_s': round(loader_samples_per_s, 2),
            'seconds_per_iter': round(seconds / args.iters, 4), 'peak_gib': round(peak, 3),
            'device': device_name(runtime.device), 'amp': str(runtime.amp_dtype),
            'threads': torch.get_num_threads()}


def device_name(device):
    import torch
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    model = platform.processor() or 'CPU'
    try:
        with open('/proc/cpuinfo') as f:
            model = next(line.split(':', 1)[1].strip() for line in f
                         if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{os.cpu_count()}-core CPU ({model})'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='ViT-B-16', choices=['tiny', *ARCHS],
                        help='MODEL.NAME; random weights of its sizes unless --weights')
    parser.add_argument('--weights', default='', help='a CLIP weights file (MODEL.PRETRAIN_PATH)')
    parser.add_argument('--size', type=int, nargs=2, default=(256, 128), metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--iters', type=int, default=20, help='timed batches')
    parser.add_argument('--warmup', type=int, default=3, help='untimed batches first')
    parser.add_argument('--ids', type=int, default=16, help='generated identities (half train)')
    parser.add_argument('--methods', default='clipreid,pcl')
    parser.add_argument('--device', default='cuda', help="MODEL.DEVICE ('cuda' falls back to cpu)")
    parser.add_argument('--amp', default='auto', help='SOLVER.AMP')
    parser.add_argument('--workers', type=int, default=8, help='DATALOADER.NUM_WORKERS')
    parser.add_argument('--data', default=os.path.join(REPO, 'output', 'bench_train'),
                        help='folder for generated images, random weights and logs')
    parser.add_argument('--json', action='store_true', help='also print each result as a JSON line')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(argv=None):
    """Measure each method in a fresh process; print a line each and return their figures."""
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    data_root(args)  # generated once, outside the timed processes
    weights = pick_weights(args)
    h, w = args.size
    print(f'{args.model} {h}x{w}, batch {args.batch}, {args.iters} timed iterations after '
          f'{args.warmup}; weights {weights}')
    results = []
    for method in args.methods.split(','):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv,
                              '--weights', weights, '--child', method],
                             capture_output=True, text=True, env={**os.environ, 'TQDM_DISABLE': '1'})
        if out.returncode:
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            sys.exit(out.returncode)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f'  {method:9s} ({r["params_m"]:.1f}M parameters) {r["samples_per_s"]:9.1f} '
              f'samples/s (loader alone {r["loader_samples_per_s"]:.1f})  '
              f'{r["seconds_per_iter"]:.3f} s/iter  peak {r["peak_gib"]:.2f} GiB  '
              f'on {r["device"]} (amp {r["amp"]}, {r["threads"]} threads)')
        if args.json:
            print(json.dumps(r))
        results.append(r)
    return results


def main():
    args = parse_args()
    os.environ.setdefault('TQDM_DISABLE', '1')
    if args.child:
        print(json.dumps(measure(args, args.child)))
        return
    run()


if __name__ == '__main__':
    main()
