"""Thin helpers over torch.distributed; every function also works in a single process."""
import atexit
import contextlib
import os

import numpy as np
import torch
import torch.distributed as dist

from utils.errors import ReIDError, one_line


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main_process():
    return get_rank() == 0


def launched_by_torchrun():
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def init_distributed(device_type):
    """Join the process group torchrun set up: NCCL on GPU, gloo on CPU. No-op otherwise."""
    if not launched_by_torchrun() or is_dist():
        return
    if device_type == 'cuda':  # launchers that give each process one GPU: LOCAL_RANK % 1
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
    dist.init_process_group(backend='nccl' if device_type == 'cuda' else 'gloo')
    atexit.register(dist.destroy_process_group)  # NCCL warns when a group is never destroyed


def collective_device():
    """Where a collective's tensors must live: the current GPU under NCCL, else the CPU."""
    if is_dist() and dist.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def all_gather_tensor(tensor):
    """Concatenate along dim 0 the tensors of all ranks, in rank order (sizes may differ).
    The result is on the tensor's device; the exchange happens on collective_device()."""
    if not is_dist():
        return tensor
    home, tensor = tensor.device, tensor.to(collective_device())
    world = get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:int(s.item())] for g, s in zip(gathered, sizes)]).to(home)


def shard(items, rank, world_size, block=1):
    """Rank's contiguous share of `items`, cut at multiples of `block` items (a loader's
    batch size: every batch is then one the single-process loader makes too). Shares in rank
    order concatenate to `items`."""
    blocks = -(-len(items) // block)
    return items[blocks * rank // world_size * block:blocks * (rank + 1) // world_size * block]


GATHER_SLICE_BYTES = 1 << 28


def gather_rows_to_main(local, num_rows):
    """Rank 0: the [num_rows, ...] float32 numpy concatenation, in rank order, of every rank's
    `local` rows (contiguous shares); other ranks: None. Sent in slices of GATHER_SLICE_BYTES
    per rank, so no device holds more than one slice of each rank at a time."""
    if not is_dist():
        return local
    sizes = all_gather_object(len(local))
    main, world, dev = is_main_process(), get_world_size(), collective_device()
    row_shape = tuple(local.shape[1:])
    step = max(1, GATHER_SLICE_BYTES // (4 * max(1, int(np.prod(row_shape)))))
    out = torch.empty((num_rows,) + row_shape).numpy() if main else None
    offsets = np.cumsum([0] + sizes)
    for s in range(0, max(sizes), step):
        piece = torch.zeros((step,) + row_shape, device=dev)
        part = torch.from_numpy(np.ascontiguousarray(local[s:s + step], dtype=np.float32))
        piece[:len(part)] = part
        received = [torch.empty_like(piece) for _ in range(world)] if main else None
        dist.gather(piece, received, dst=0)
        for rank, rows in enumerate(received or []):
            n = min(step, sizes[rank] - s)
            if n > 0:
                out[offsets[rank] + s:offsets[rank] + s + n] = rows[:n].cpu().numpy()
    return out


def all_gather_equal(tensor):
    """all_gather_tensor for tensors of the same shape on every rank: one collective, no host
    synchronisation."""
    if not is_dist():
        return tensor
    out = tensor.new_empty((get_world_size() * tensor.shape[0],) + tuple(tensor.shape[1:]))
    dist.all_gather_single(out, tensor.contiguous())  # all_gather_into_tensor, deprecated in 2.14
    return out


def broadcast_from_main(tensor):
    """Overwrite `tensor` with rank 0's (same shape and dtype on every rank); returns it."""
    if is_dist():
        dist.broadcast(tensor, 0)
    return tensor


def average_gradients(params):
    """Average the gradients of parameters that DDP does not manage over all ranks."""
    if not is_dist():
        return
    for param in params:
        dist.all_reduce(param.grad)
        param.grad /= get_world_size()


def all_gather_object(obj):
    """A list with every rank's object, in rank order."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def launch_rank():
    """This process's rank, also before the process group exists (torchrun's RANK)."""
    if launched_by_torchrun() and not is_dist():
        return int(os.environ['RANK'])
    return get_rank()


def _failure_report(err):
    """(is bad input, one-line message) of an exception, as cli_main would print it."""
    if isinstance(err, (ReIDError, OSError)):
        return True, one_line(err)
    return False, f'{type(err).__name__}: {one_line(err)}'


@contextlib.contextmanager
def fail_together():
    """Around work that not every rank does (rank 0 clustering, writing a file) before the ranks
    meet in a collective: when it raises on any rank, every rank raises on leaving the block,
    with the message of the lowest failing rank, instead of the others waiting in their next
    collective until its timeout. Every rank enters the block; it must hold no collective.

    The failing rank raises its own exception; the others raise ReIDError with its message
    (the same `error:` line) when it was bad input or a refused file, else a RuntimeError."""
    if not is_dist():
        yield
        return
    failure = None
    try:
        yield
    except Exception as err:  # noqa: BLE001 - every rank must learn of any failure
        failure = err
    reports = all_gather_object(None if failure is None else _failure_report(failure))
    failed = [rank for rank, report in enumerate(reports) if report is not None]
    if not failed:
        return
    if failed[0] == get_rank():
        raise failure
    user_error, message = reports[failed[0]]
    if user_error:
        raise ReIDError(message) from failure
    raise RuntimeError(f'rank {failed[0]} failed: {message}') from failure
