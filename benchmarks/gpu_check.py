"""The one-shot GPU check behind benchmarks/gpu_check.sh (run that; see its header).

Steps, each with a time limit, stopping at the first failure with its output:
  1. the CUDA-only tests (pytest -k "cuda or gpu"; on a GPU none may be skipped)
  2. bench_train.py, ViT-B/16 at 256x128, batch 64: SOLVER.AMP bf16, then fp16 (GradScaler)
  3. a one-GPU torchrun (NCCL) PCL training run (bf16) with evaluation on generated demo data
     (rank 0 gathers the distance matrix)
  4. bench_eval.py at MSMT17 size on CUDA: evaluation and re-ranking against their floors
  5. step 3's state resumed into fp16 + GradScaler, by one plain process and by torchrun
  6. the same first iterations in fp32, bf16 and fp16: their losses compared
  7. bench_large_gallery.py: 10,000 x 1,000,000 at dim 256 evaluated on the GPU limited to
     16 GiB, with the auto memory budget such a GPU gets
Then one Markdown table, as in benchmarks/README.md, naming the device.

--dry-run runs the same steps on the CPU at toy sizes (tiny CLIP, 64x32 images, a toy
evaluation, torchrun with gloo): it checks the plumbing, not the GPU.
"""
import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE = [float('inf')]  # time.monotonic() by which everything must be done


class StepFailed(Exception):
    pass


def call(cmd, limit, env=None):
    """Run cmd in the repository; its stdout+stderr; StepFailed (with the tail) on error. On a
    timeout the whole process group goes (torchrun's workers, benchmark children)."""
    limit = min(limit, DEADLINE[0] - time.monotonic())
    if limit <= 0:
        raise StepFailed(f'no time left for {" ".join(cmd)}')
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            env={**os.environ, 'TQDM_DISABLE': '1', **(env or {})})
    try:
        text = proc.communicate(timeout=limit)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text = proc.communicate()[0]
        raise StepFailed(f'{" ".join(cmd)} ran past {limit:.0f} s\n{text[-6000:]}') from None
    if proc.returncode:
        raise StepFailed(f'{" ".join(cmd)} exited with {proc.returncode}\n{text[-6000:]}')
    return text


def step_tests(args):
    text = call([sys.executable, '-m', 'pytest', '-q', '-rs', '-k', 'cuda or gpu', 'tests'], 240)
    summary = text.strip().splitlines()[-1]
    skipped = int(m.group(1)) if (m := re.search(r'(\d+) skipped', summary)) else 0
    if not args.dry_run and skipped:
        raise StepFailed(f'CUDA tests were skipped on a CUDA machine:\n{text[-3000:]}')
    return [['CUDA-only tests', 'pytest -k "cuda or gpu"', summary.strip('= '), '', '']]


def step_train(args):
    if args.dry_run:
        base = ['--model', 'tiny', '--size', '64', '32', '--batch', '8', '--iters', '2',
                '--warmup', '1', '--device', 'cpu', '--workers', '0']
    else:
        base = ['--model', 'ViT-B-16', '--size', '256', '128', '--batch', '64', '--iters', '10',
                '--warmup', '3', '--device', 'cuda', '--workers', '8']
    base += ['--data', os.path.join(args.work, 'bench_train'), '--json']
    rows = []
    for amp, label in (('bf16', 'bf16'), ('fp16', 'fp16 + GradScaler')):
        text = call([sys.executable, 'benchmarks/bench_train.py', *base, '--amp', amp], 240)
        for r in (json.loads(line) for line in text.splitlines() if line.startswith('{')):
            method = 'CLIP-ReID stage 2' if r['method'] == 'clipreid' else 'PCL'
            if r['amp'] != f'torch.{"bfloat16" if amp == "bf16" else "float16"}':
                raise StepFailed(f'bench_train ran with autocast {r["amp"]}, not {amp}')
            setting = f'{base[1]} {base[3]}x{base[4]}, batch {base[6]}, {label}'
            rows.append([f'training: {method}', setting, f'{r["samples_per_s"]:.1f} samples/s '
                         f'(loader alone {r["loader_samples_per_s"]:.0f})',
                         f'{r["seconds_per_iter"]:.3f} s/iteration', f'{r["peak_gib"]:.2f} GiB'])
    return rows


def demo_run(args, out, *opts, torchrun=False):
    """Train PCL on generated demo data into `out` (one process, or torchrun); its log."""
    data = os.path.join(args.work, 'demo_data')
    weights = os.path.join(data, 'tiny_clip_vit.pt')
    if not os.path.exists(weights):
        call([sys.executable, '-m', 'datasets.demo_data', '--root', data, '--layouts',
              'market1501', '--ids', '24'], 120)
        call([sys.executable, '-m', 'model.tiny_clip', '--out', weights, '--arch', 'vit',
              '--fmt', 'torchscript'], 120)
    launcher = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '1'] * torchrun
    call([sys.executable, *launcher, 'train_pcl.py', '--config_file', 'configs/demo/pcl.yml',
          'DATASETS.ROOT_DIR', data, 'MODEL.PRETRAIN_PATH', weights,
          'MODEL.DEVICE', 'cpu' if args.dry_run else 'cuda', 'OUTPUT_DIR', out,
          'SOLVER.ITERS', '10', 'SOLVER.EVAL_PERIOD', '2', 'SOLVER.CHECKPOINT_PERIOD', '1',
          'TEST.EVAL_BEFORE_TRAIN', 'False', 'DATALOADER.NUM_WORKERS', '2', *opts], 240)
    return open(os.path.join(out, 'train_log.txt')).read()


def step_torchrun(args):
    out = os.path.join(args.work, 'torchrun')
    log = demo_run(args, out, 'SOLVER.MAX_EPOCHS', '2', 'SOLVER.AMP', 'bf16',
                   'TEST.DIST_MAT', 'dist.npy', torchrun=True)  # rank 0 gathers the matrix
    running = re.search(r'Running on (\S+) \((\d+) process', log)
    mAP = re.findall(r'mAP\s+([\d.]+)%', log)
    if not running or not mAP or (not args.dry_run and not running.group(1).startswith('cuda')):
        raise StepFailed(f'the torchrun log does not show training and evaluation on the '
                         f'device:\n{log[-3000:]}')
    import numpy as np
    shape = np.load(os.path.join(out, 'dist.npy')).shape
    if 0 in shape:
        raise StepFailed(f'the gathered distance matrix is empty: {shape}')
    backend = 'gloo' if args.dry_run else 'NCCL'
    return [['torchrun, 1 process', f'PCL on demo data, {backend} on {running.group(1)}, '
             '2 epochs, bf16', f'mAP {mAP[-1]}% (tiny random CLIP); distance matrix '
             f'{shape[0]} x {shape[1]} gathered', '', '']]


def step_resume(args):
    """The torchrun run's bf16 state (step torchrun) resumed into fp16 + GradScaler: by a plain
    one-process run, and by torchrun on one GPU."""
    saved = os.path.join(args.work, 'torchrun')
    if not os.path.exists(os.path.join(saved, 'train_log.txt')):
        demo_run(args, saved, 'SOLVER.MAX_EPOCHS', '2', 'SOLVER.AMP', 'bf16', torchrun=True)
    rows = []
    for name, torchrun in (('one process', False), ('torchrun, 1 process', True)):
        out = os.path.join(args.work, f'resume_{"torchrun" if torchrun else "plain"}')
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(saved, out)
        log = demo_run(args, out, '--resume', 'SOLVER.MAX_EPOCHS', '3', 'SOLVER.AMP', 'fp16',
                       torchrun=torchrun)
        resumed = 'resumed pcl after epoch 2' in log
        epoch3 = re.search(r'pcl epoch\[3\].*', log)
        mAP = re.findall(r'mAP\s+([\d.]+)%', log)
        if not resumed or not epoch3 or not mAP:
            raise StepFailed(f'resume ({name}) did not train epoch 3 after resuming:\n{log[-3000:]}')
        rows.append([f'resume: {name}', 'torchrun bf16 state (epoch 2) -> fp16 + GradScaler',
                     f'epoch 3 trained, mAP {mAP[-1]}%', '', ''])
    return rows


def step_precision(args):
    """The same first iterations (same seed, weights and batches) in fp32, bf16 and fp16:
    the losses must agree to within the precisions' rounding."""
    losses = {}
    for amp in ('off', 'bf16', 'fp16'):
        out = os.path.join(args.work, f'precision_{amp}')
        shutil.rmtree(out, ignore_errors=True)
        demo_run(args, out, 'SOLVER.MAX_EPOCHS', '1', 'SOLVER.AMP', amp, 'SOLVER.LOG_PERIOD', '1',
                 'SOLVER.EVAL_PERIOD', '1')
        with open(os.path.join(out, 'metrics.csv')) as f:
            losses[amp] = [float(r['value']) for r in csv.DictReader(f) if r['name'] == 'train/loss']
    n = min(map(len, losses.values()))
    if n == 0:
        raise StepFailed('no train/loss values in metrics.csv')
    rows = []
    for amp in ('bf16', 'fp16'):
        first = abs(losses[amp][0] - losses['off'][0]) / abs(losses['off'][0])
        worst = max(abs(a - b) / abs(b) for a, b in zip(losses[amp][:n], losses['off'][:n]))
        if first > 0.05:
            raise StepFailed(f'{amp}: first-iteration loss {losses[amp][0]:.5f} vs fp32 '
                             f'{losses["off"][0]:.5f} ({100 * first:.1f}% apart)')
        rows.append([f'loss: {amp} vs fp32', f'PCL demo, first {n} iterations',
                     f'iteration 1: {100 * first:.2g}% apart; at most {100 * worst:.2g}%', '', ''])
    return rows


def step_eval(args):
    scale, device = ('tiny', 'cpu') if args.dry_run else ('msmt17', 'cuda')
    text = call([sys.executable, 'benchmarks/bench_eval.py', '--scale', scale, '--device', device,
                 '--repeats', '1'], 300)
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('| ') and len(cells) == 6 and cells[0] not in ('size', '---'):
            size, step, ours, floor, ratio, peak = cells
            rows.append([step, size, f'{ratio} ({floor})', ours, peak])
    if not rows:
        raise StepFailed(f'bench_eval printed no table:\n{text[-3000:]}')
    return rows


def step_large(args):
    sizes = (['--queries', '200', '--gallery', '20000', '--dim', '32', '--budget', '0.05']
             if args.dry_run else ['--queries', '10000', '--gallery', '1000000', '--dim', '256',
                                   '--device', 'cuda', '--gpu-memory', '16'])
    text = call([sys.executable, 'benchmarks/bench_large_gallery.py', *sizes], 300)
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('| ') and len(cells) == 6 and cells[0] not in ('size', '---'):
            size, budget, ours, floor, ratio, peak = cells
            return [['large gallery', f'{size}, budget {budget}', f'{ratio} ({floor})', ours, peak]]
    raise StepFailed(f'bench_large_gallery printed no table:\n{text[-3000:]}')


STEPS = [('tests', step_tests), ('train', step_train), ('torchrun', step_torchrun),
         ('eval', step_eval), ('resume', step_resume), ('precision', step_precision),
         ('large', step_large)]


def device_name(dry_run):
    import torch
    if dry_run:
        return 'CPU (dry run: toy sizes, no GPU involved)'
    return f'{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dry-run', action='store_true', help='the same steps on the CPU at toy sizes')
    parser.add_argument('--steps', default=','.join(name for name, _ in STEPS))
    parser.add_argument('--work', default='',
                        help='folder for generated data (default: a temporary one)')
    parser.add_argument('--budget', type=float, default=480, help='seconds for all steps')
    args = parser.parse_args()
    DEADLINE[0] = time.monotonic() + args.budget
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit('gpu_check: FAILED: no CUDA device (torch.cuda.is_available() is False). This check '
                 'needs one GPU; use --dry-run to check the steps on the CPU.')
    args.work = args.work or tempfile.mkdtemp(prefix='gpu_check_')
    wanted = args.steps.split(',')
    rows, start = [], time.perf_counter()
    for name, step in STEPS:
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        print(f'gpu_check: {name} ...', flush=True)
        try:
            rows += step(args)
        except StepFailed as err:
            print(f'gpu_check: FAILED at step {name}:\n{err}', file=sys.stderr)
            sys.exit(1)
        print(f'gpu_check: {name} done in {time.perf_counter() - t0:.0f} s', flush=True)
    print(f'\nDevice: {device_name(args.dry_run)}; all steps in {time.perf_counter() - start:.0f} s\n')
    print('| check | setting | result | time | peak memory |')
    print('| --- | --- | --- | --- | --- |')
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')


if __name__ == '__main__':
    main()
