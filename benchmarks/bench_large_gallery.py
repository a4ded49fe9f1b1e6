"""Evaluation of a huge gallery within a memory budget: time and added peak memory.

    python benchmarks/bench_large_gallery.py                       # 5,000 x 1,000,000, dim 128, budget 2 GiB, CPU
    python benchmarks/bench_large_gallery.py --queries 10000 --dim 256 --device cuda --gpu-memory 16

Each measurement runs in a fresh process. The features are made first (in place, so no
temporary raises the peak); the figure is what evaluation adds on top of them: on the CPU
the peak resident memory during R1_mAP_eval.compute() (Linux VmHWM, reset just before it)
less the resident memory before it (numba's ranking code, loaded once per process, is loaded
before), on a GPU
torch.cuda.max_memory_allocated() minus the memory allocated before. The floor is one Q x G
matrix product of the same features, made in row blocks into one reused buffer.
--gpu-memory GIB makes a larger GPU behave as one of that size: allocations past it fail
(torch.cuda.set_per_process_memory_fraction), and the budget is the auto one such a GPU gets
(half its memory less what is allocated) unless --budget says otherwise.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30


def make_features(args):
    import torch
    gen = torch.Generator().manual_seed(0)
    n = args.queries + args.gallery
    feats = torch.randn(n, args.dim, generator=gen)
    feats /= feats.norm(dim=1, keepdim=True)
    pids = torch.randint(0, args.gallery // 20, (n,), generator=gen)
    camids = torch.randint(0, 6, (n,), generator=gen)
    return feats.to(args.device), pids, camids


def _status_bytes(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise OSError(f'no {field} in /proc/self/status')


def reset_peak():
    """The resident memory now, after making it the process's peak (Linux: clear_refs 5
    resets VmHWM); elsewhere getrusage's peak so far."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _status_bytes('VmRSS')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_bytes(device):
    import torch
    if device == 'cuda':
        return torch.cuda.max_memory_allocated()
    try:
        return _status_bytes('VmHWM')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def limit_gpu(args):
    """Emulate a GPU of --gpu-memory GiB; the budget it would get by default (GiB)."""
    import torch
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_memory * GIB / total))
    return args.budget or 0.5 * (args.gpu_memory * GIB - torch.cuda.memory_allocated()) / GIB


def run_evaluation(args):
    import torch
    from utils.metrics import R1_mAP_eval
    feats, pids, camids = make_features(args)
    if args.gpu_memory:
        args.budget = limit_gpu(args)
    evaluator = R1_mAP_eval(args.queries, feat_norm='yes', keep_distmat=False,
                            memory_budget=args.budget)
    evaluator.update((feats, pids, camids))
    del feats
    if args.device == 'cpu':  # numba's ranking code (about 160 MB per process), loaded apart
        from utils import ranking_cpu
        ranking_cpu.load()
    if args.device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = reset_peak()
    start = time.perf_counter()
    result = evaluator.compute()
    if args.device == 'cuda':
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {'seconds': seconds, 'added_gib': (peak_bytes(args.device) - before) / GIB,
            'budget_gib': args.budget, 'mAP': result.mAP, 'rank1': float(result.cmc[0])}


def run_floor(args):
    import torch
    feats, _, _ = make_features(args)
    q, g = feats[:args.queries], feats[args.queries:]
    rows = 256
    buffer = torch.empty(rows, args.gallery, device=args.device)
    start = time.perf_counter()
    for s in range(0, args.queries, rows):
        block = q[s:s + rows]
        torch.mm(block, g.t(), out=buffer[:len(block)])
    if args.device == 'cuda':
        torch.cuda.synchronize()
    return {'seconds': time.perf_counter() - start}


def measure(args, what):
    cmd = [sys.executable, __file__, '--child', what, '--queries', str(args.queries),
           '--gallery', str(args.gallery), '--dim', str(args.dim), '--device', args.device,
           '--threads', str(args.threads), '--gpu-memory', str(args.gpu_memory)]
    if args.budget is not None:
        cmd += ['--budget', str(args.budget)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        sys.exit(f'{what} failed:\n{out.stderr}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--queries', type=int, default=5000)
    parser.add_argument('--gallery', type=int, default=1_000_000)
    parser.add_argument('--dim', type=int, default=128)
    parser.add_argument('--budget', type=float, default=None,
                        help='TEST.MEMORY_BUDGET, GiB (default 2; with --gpu-memory, that GPU\'s auto one)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--gpu-memory', type=float, default=0,
                        help='GiB: behave as a GPU of this size (0: the whole device)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    parser.add_argument('--child', choices=('evaluation', 'floor'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.budget is None and not args.gpu_memory:
        args.budget = 2.0
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        sys.path.insert(0, REPO)
        print(json.dumps((run_evaluation if args.child == 'evaluation' else run_floor)(args)))
        return
    floor = measure(args, 'floor')
    ev = measure(args, 'evaluation')
    device = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'device: {device}; load average {os.getloadavg()[0]:.2f}')
    gpu = f' on {args.gpu_memory:g} GiB' if args.gpu_memory else ''
    print('| size | budget | evaluation | one Q x G product | ratio | added peak memory |')
    print('| --- | --- | --- | --- | --- | --- |')
    print(f'| {args.queries:,} x {args.gallery:,}, dim {args.dim}{gpu} | {ev["budget_gib"]:.3g} GiB | '
          f'{ev["seconds"]:.1f} s | {floor["seconds"]:.1f} s | '
          f'{ev["seconds"] / floor["seconds"]:.2f}x | {ev["added_gib"]:.2f} GiB |')


if __name__ == '__main__':
    main()
