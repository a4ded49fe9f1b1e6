"""Thin helpers over torch.distributed; every function also works in a single process."""
import atexit
import os

import torch
import torch.distributed as dist


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
    if device_type == 'cuda':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    dist.init_process_group(backend='nccl' if device_type == 'cuda' else 'gloo')
    atexit.register(dist.destroy_process_group)  # NCCL warns when a group is never destroyed


def all_gather_tensor(tensor):
    """Concatenate along dim 0 the tensors of all ranks, in rank order (sizes may differ)."""
    if not is_dist():
        return tensor
    world = get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:int(s.item())] for g, s in zip(gathered, sizes)])


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

