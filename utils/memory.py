"""Memory budgets: how many bytes a chunked computation may add, and rows that fit in them.

Evaluation, re-ranking and search hold a few rows of a query x gallery matrix at a time.
Their chunk sizes come from a budget in bytes (TEST.MEMORY_BUDGET, in GiB) rather than from
fixed row counts, so a gallery of a million images costs what the budget allows, not a
thousand rows of it. Auto (0) is half of what the device has free now.
"""
import os

import torch

from .errors import ReIDError

GIB = 1 << 30
AUTO_SHARE = 0.5  # of the free memory, for the auto budget


def free_bytes(device):
    """Free memory of a torch device: the CUDA allocator's view, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def budget_bytes(gib, device='cpu'):
    """TEST.MEMORY_BUDGET (GiB; 0 or None = auto) in bytes."""
    if gib is None or gib == 0:
        return int(AUTO_SHARE * free_bytes(device))
    if not isinstance(gib, (int, float)) or isinstance(gib, bool) or not gib > 0 \
            or gib == float('inf'):
        raise ReIDError(f'TEST.MEMORY_BUDGET must be a positive number of GiB (0 = auto), '
                        f'got {gib!r}')
    return int(gib * GIB)


def rows_within(budget, bytes_per_row, what):
    """How many rows of bytes_per_row fit in budget bytes (at least one, or a clear error)."""
    rows = int(budget // max(1, bytes_per_row))
    if rows < 1:
        raise ReIDError(f'the memory budget leaves {max(budget, 0) / GIB:.3g} GiB for {what}, '
                        f'less than one row needs ({bytes_per_row / GIB:.3g} GiB): raise '
                        f'TEST.MEMORY_BUDGET')
    return rows
