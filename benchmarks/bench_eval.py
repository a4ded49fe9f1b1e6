"""Time and peak memory of evaluation and re-ranking on random features.

    python benchmarks/bench_eval.py                   # Market1501 size: 3,368 x 15,913, dim 1280
    python benchmarks/bench_eval.py --scale msmt17    # MSMT17 size: 11,659 x 82,161 (minutes)

Each measurement runs in a fresh process, so its peak resident memory (getrusage maxrss,
which also sees torch's allocations, unlike tracemalloc) is its own. "peak" is the process
peak; "added" is the peak minus the resident memory once the features exist.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

SCALES = {'market': (3368, 15913, 751), 'msmt17': (11659, 82161, 3060)}
GB = 1 << 30


def rss_gb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / GB


def measure(scale, dim, stage, seed=0):
    """One measurement in this process; returns a dict of figures."""
    import torch
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from utils.metrics import R1_mAP_eval

    num_q, num_g, num_ids = SCALES[scale]
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(num_q + num_g, dim, generator=gen)
    pids = torch.randint(0, num_ids, (num_q + num_g,), generator=gen)
    camids = torch.randint(0, 6, (num_q + num_g,), generator=gen)
    base = rss_gb()
    evaluator = R1_mAP_eval(num_q, max_rank=50, feat_norm='yes', reranking=stage == 'rerank',
                            k1=20, k2=6, lambda_value=0.3)
    for s in range(0, num_q + num_g, 256):  # batch by batch, as a test loop does
        evaluator.update((feats[s:s + 256], pids[s:s + 256], camids[s:s + 256]))
    start = time.perf_counter()
    result = evaluator.compute()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    return {'stage': stage, 'scale': scale, 'seconds': round(seconds, 1), 'peak_gb': round(peak, 2),
            'added_gb': round(peak - base, 2), 'mAP': round(result.mAP, 6),
            'rank1': round(float(result.cmc[0]), 6), 'threads': torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scale', choices=sorted(SCALES), default='market')
    parser.add_argument('--dim', type=int, default=1280)
    parser.add_argument('--stages', default='eval,rerank', help='comma list of eval, rerank')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.scale, args.dim, args.child)))
        return
    num_q, num_g, _ = SCALES[args.scale]
    n = num_q + num_g
    print(f'{args.scale}: {num_q} queries x {num_g} gallery, dim {args.dim}, {os.cpu_count()} CPUs')
    print(f'  (a dense (Q+G)^2 float32 matrix, as upstream re-ranking holds several of, is '
          f'{n * n * 4 / GB:.1f} GB; Q x G float32 is {num_q * num_g * 4 / GB:.2f} GB)')
    for stage in args.stages.split(','):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), '--scale', args.scale,
                              '--dim', str(args.dim), '--child', stage],
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            sys.exit(out.returncode)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        what = 'evaluation' if stage == 'eval' else 're-ranking + evaluation'
        print(f'  {what:24s} {r["seconds"]:8.1f} s   peak RSS {r["peak_gb"]:6.2f} GB '
              f'(+{r["added_gb"]:.2f} GB over the features)   mAP {100 * r["mAP"]:.2f}%  '
              f'R1 {100 * r["rank1"]:.2f}%')


if __name__ == '__main__':
    main()
