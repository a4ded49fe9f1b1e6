"""Evaluation and re-ranking: time and peak memory, beside upstream code and the floors.

    python benchmarks/bench_eval.py                   # Market1501 size (a few minutes on 2 cores)
    python benchmarks/bench_eval.py --scale msmt17    # MSMT17 size (tens of minutes on 2 cores)
    python benchmarks/bench_eval.py --scale all --device cuda
    python benchmarks/bench_eval.py --scale msmt17 --parts eval --threads 1

One run prints one table (Markdown, as in benchmarks/README.md). Every row is measured in
a fresh process, so its peak memory is its own (CPU: getrusage maxrss, which sees torch's
allocations; CUDA: torch.cuda.max_memory_allocated).

- eval_func: ours and upstream CLIP-ReID's eval_func, alternately, on the same random
  Market-size matrix whose rows have no ties (so both must give identical CMC and mAP).
- re-ranking (half Market, dim 256): ours against the animal code's numpy re_ranking, which
  is given the cosine similarities (not timed); ours uses that code's (2 - 2 cos)^2 distance.
- floors: one Q x G matrix product, and one (Q+G)^2 matrix product (row blocks), of the
  same random features.
- evaluation / re-ranking + evaluation: R1_mAP_eval.compute() (distances, k-reciprocal
  re-ranking, ranks, CMC/mAP, keeping the Q x G matrix), dim --dim, L2-normalised features.

The upstream functions are read at run time from git clones of Syliz517/CLIP-ReID and
Chloe-Yu/CLIP-ReID (--upstream, --animal, or the environment variables CLIP_REID_REPO and
ANIMAL_CLIP_REID_REPO); without a clone its comparison is skipped. Figures
depend on the machine being otherwise idle: torch's worker threads spin and wait on each
other when another process holds a core, while upstream's numpy loops use one core anyway.
The load average is printed with the table; on a shared machine compare with --threads 1
(or OMP_WAIT_POLICY=PASSIVE).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALES = {'market': (3368, 15913, 751), 'msmt17': (11659, 82161, 3060), 'tiny': (200, 1000, 50)}
NAMES = {'market': 'Market1501', 'msmt17': 'MSMT17', 'tiny': 'toy'}
GIB = 1 << 30


def load_upstream(repo, path, name):
    """A module holding `path` as committed at HEAD of the git clone `repo`, or None."""
    if not repo:  # `git -C ''` would read this repository
        return None
    try:
        source = subprocess.run(['git', '-C', repo, 'show', f'HEAD:{path}'], check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType(name)
    source = source.replace('from utils.reranking import re_ranking', '')  # not needed, not ours
    exec(compile(source, f'{repo}:{path}', 'exec'), module.__dict__)
    return module


def timed(fn, repeats):
    best, out = float('inf'), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def sync(device):
    import torch
    if device == 'cuda':
        torch.cuda.synchronize()


def features(scale, dim, device, seed=0):
    import torch
    num_q, num_g, num_ids = SCALES[scale]
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(num_q + num_g, dim, generator=gen)
    pids = torch.randint(0, num_ids, (num_q + num_g,), generator=gen)
    camids = torch.randint(0, 6, (num_q + num_g,), generator=gen)
    return feats.to(device), pids, camids


# -------------------------------------------------------------------- measurements
def bench_eval_func(args):
    import torch
    from utils.metrics import eval_func
    upstream = load_upstream(args.upstream, 'utils/metrics.py', 'upstream_metrics')
    num_q, num_g, num_ids = SCALES['market']
    rng = np.random.default_rng(0)
    dist = np.empty((num_q, num_g), np.float32)
    for i in range(num_q):  # rows without ties: every stable or unstable sort agrees
        dist[i] = rng.permutation(num_g)
    dist = dist / num_g
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    q_cams, g_cams = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    on = torch.from_numpy(dist).to(args.device) if args.device != 'cpu' else dist

    def ours_run():
        out = eval_func(on, q_pids, g_pids, q_cams, g_cams)
        sync(args.device)
        return out

    ours, (cmc, mAP) = timed(ours_run, args.repeats)
    out = {'ours_s': ours}
    if upstream is not None:
        theirs, (cmc_up, mAP_up) = timed(
            lambda: upstream.eval_func(dist, q_pids, g_pids, q_cams, g_cams), 1)
        out.update(ref_s=theirs, same_cmc=bool(np.array_equal(cmc, cmc_up)),
                   map_diff=abs(float(mAP) - float(mAP_up)))
    return out


def bench_rerank_animal(args):
    import torch
    import torch.nn.functional as F
    from utils.reranking import re_ranking
    animal = load_upstream(args.animal, 're_ranking.py', 'animal_re_ranking')
    num_q, num_g = SCALES['market'][0] // 2, SCALES['market'][1] // 2
    gen = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(num_q + num_g, 256, generator=gen), dim=1)
    q, g = feats[:num_q].to(args.device), feats[num_q:].to(args.device)
    ours, dist = timed(lambda: (re_ranking(q, g, 20, 6, 0.3, dist='cosine_sq'), sync(args.device))[0],
                       args.repeats)
    out = {'ours_s': ours}
    if animal is not None:
        q, g = q.cpu(), g.cpu()
        sims = (q @ g.T).numpy(), (q @ q.T).numpy(), (g @ g.T).numpy()
        theirs, ref = timed(lambda: animal.re_ranking(*sims, k1=20, k2=6, lambda_value=0.3), 1)
        out.update(ref_s=theirs, max_diff=float(np.abs(dist - ref).max()))
    return out


def bench_floor(args, stacked):
    """One Q x G product (stacked=False) or one (Q+G)^2 product, by row blocks."""
    import torch
    import torch.nn.functional as F
    feats = F.normalize(features(args.scale, args.dim, args.device)[0], dim=1)
    num_q = SCALES[args.scale][0]
    rows, cols = (feats, feats) if stacked else (feats[:num_q], feats[num_q:])
    block = 2048
    out = torch.empty(block if stacked else rows.shape[0], cols.shape[0], device=args.device)

    def run():
        for b in range(0, rows.shape[0], block):
            a = rows[b:b + block]
            target = out[:a.shape[0]] if stacked else out[b:b + a.shape[0]]
            torch.mm(a, cols.T, out=target)
        sync(args.device)
    return {'ours_s': timed(run, 1)[0]}


def bench_evaluator(args, rerank):
    import torch
    from utils.metrics import R1_mAP_eval
    feats, pids, camids = features(args.scale, args.dim, args.device)
    num_q = SCALES[args.scale][0]
    evaluator = R1_mAP_eval(num_q, max_rank=50, feat_norm='yes', reranking=rerank, k1=20, k2=6,
                            lambda_value=0.3)
    for s in range(0, len(pids), 256):  # batch by batch, as a test loop does
        evaluator.update((feats[s:s + 256], pids[s:s + 256], camids[s:s + 256]))
    if args.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    else:  # numba's ranking code is loaded once per process (about 0.6 s): not timed here
        from utils import ranking_cpu
        ranking_cpu.load()
    seconds, result = timed(lambda: (evaluator.compute(), sync(args.device))[0], 1)
    return {'ours_s': seconds, 'mAP': result.mAP, 'rank1': float(result.cmc[0])}


STEPS = {'eval_func': bench_eval_func, 'rerank_animal': bench_rerank_animal,
         'floor_qg': lambda a: bench_floor(a, False), 'eval': lambda a: bench_evaluator(a, False),
         'floor_nn': lambda a: bench_floor(a, True), 'rerank': lambda a: bench_evaluator(a, True)}


def child(args):
    sys.path.insert(0, REPO)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    out = STEPS[args.child](args)
    if args.device == 'cuda':
        out['peak_gib'] = torch.cuda.max_memory_allocated() / GIB
    else:
        out['peak_gib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    out['threads'] = torch.get_num_threads()
    print(json.dumps(out))


# ------------------------------------------------------------------------ report
def measure(args, step, scale):
    cmd = [sys.executable, os.path.abspath(__file__), '--child', step, '--scale', scale,
           '--dim', str(args.dim), '--device', args.device, '--repeats', str(args.repeats),
           '--threads', str(args.threads), '--parts', args.parts,
           '--upstream', args.upstream, '--animal', args.animal]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        sys.exit(f'bench_eval: step {step} ({scale}) failed')
    return json.loads(out.stdout.strip().splitlines()[-1])


def secs(seconds):
    return f'{seconds:.3g} s' if seconds < 100 else f'{seconds:.0f} s'


def size(scale, dim=None):
    q, g, _ = SCALES[scale]
    return f'{NAMES[scale]} {q:,} x {g:,}' + (f', dim {dim}' if dim else '')


def rows_for(args, scale):
    """Markdown rows: size | step | ours | reference | ratio | peak."""
    rows, wanted, threads = [], args.parts.split(','), None
    if scale == 'market' and 'upstream' in wanted:
        r = measure(args, 'eval_func', scale)
        ref = f'upstream eval_func {secs(r["ref_s"])}' if 'ref_s' in r else 'no upstream clone (--upstream)'
        ratio = f'{r["ref_s"] / r["ours_s"]:.1f}x faster' if 'ref_s' in r else ''
        note = (f'; CMC {"identical" if r["same_cmc"] else "DIFFERENT"}, '
                f'mAP differs by {r["map_diff"]:.1e}'
                if 'ref_s' in r else '')
        rows.append([size(scale), 'eval_func', secs(r['ours_s']), ref + note, ratio, ''])
        r = measure(args, 'rerank_animal', scale)
        q, g = SCALES['market'][0] // 2, SCALES['market'][1] // 2
        ref = (f'animal numpy re_ranking {secs(r["ref_s"])} (largest difference {r["max_diff"]:.1e})'
               if 'ref_s' in r else 'no animal-code clone (--animal)')
        ratio = f'{r["ref_s"] / r["ours_s"]:.1f}x faster' if 'ref_s' in r else ''
        rows.append([f'half Market {q:,} x {g:,}, dim 256', 're-ranking', secs(r['ours_s']),
                     ref, ratio, ''])
        threads = r['threads']
    for floor, step, name in (('floor_qg', 'eval', 'evaluation'),
                              ('floor_nn', 'rerank', 're-ranking + evaluation')):
        if step not in wanted:
            continue
        f, r = measure(args, floor, scale), measure(args, step, scale)
        threads = r['threads']
        what = 'one Q x G product' if floor == 'floor_qg' else 'one (Q+G)^2 product'
        rows.append([size(scale, args.dim), name, secs(r['ours_s']), f'{what} {secs(f["ours_s"])}',
                     f'{r["ours_s"] / f["ours_s"]:.2f}x the floor', f'{r["peak_gib"]:.2f} GiB'])
    return rows, threads


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scale', choices=sorted(SCALES) + ['all'], default='market',
                        help="'all': market then msmt17; 'tiny': a toy size to check the script")
    parser.add_argument('--dim', type=int, default=1280)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--repeats', type=int, default=3, help='runs of our timed steps (best kept)')
    parser.add_argument('--parts', default='upstream,eval,rerank',
                        help='which rows: upstream (the comparisons with upstream code, Market '
                             'size only), eval, rerank (each against its floor)')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads in every measurement (0: torch\'s default, all cores)')
    parser.add_argument('--upstream', default=os.environ.get('CLIP_REID_REPO', ''),
                        help='a git clone of Syliz517/CLIP-ReID (its eval_func)')
    parser.add_argument('--animal', default=os.environ.get('ANIMAL_CLIP_REID_REPO', ''),
                        help='a git clone of Chloe-Yu/CLIP-ReID (its numpy re_ranking)')
    parser.add_argument('--child', choices=sorted(STEPS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def table(args):
    """(header line, Markdown table lines) of every figure for args.scale."""
    load = os.getloadavg()[0]
    rows, threads = [], None
    for scale in (['market', 'msmt17'] if args.scale == 'all' else [args.scale]):
        found, used = rows_for(args, scale)
        rows, threads = rows + found, used or threads
    header = (f'device {describe(args.device)}, {threads} torch threads; load average {load:.2f} '
              f'before, {os.getloadavg()[0]:.2f} after')
    lines = ['| size | step | ours | reference / floor | ratio | peak memory |',
             '| --- | --- | --- | --- | --- | --- |']
    return header, lines + ['| ' + ' | '.join(row) + ' |' for row in rows]


def main():
    args = parse_args()
    if args.child:
        return child(args)
    header, lines = table(args)
    print(header)
    print('\n'.join(lines))


def describe(device):
    if device == 'cuda':
        import torch
        return torch.cuda.get_device_name()
    model = 'CPU'
    if os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        model = names[0] if names else model
    return f'{model}, {os.cpu_count()} cores'


if __name__ == '__main__':
    main()
