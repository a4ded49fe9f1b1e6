"""Sparse (row, column) pairs of a query x gallery matrix, built on the tensors' device.

Evaluation only ever needs a few entries of each row by name: the gallery images of the
query's identity and the ones its protocol ignores. They are listed as pairs (row-major,
columns ascending) rather than as dense [rows, G] masks.
"""
import torch


def expand(starts, lengths):
    """(starts[i] + 0..lengths[i]-1 for every i, concatenated; the owner i of each)."""
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    offset = torch.arange(owner.numel(), device=lengths.device) - (lengths.cumsum(0) - lengths)[owner]
    return starts[owner] + offset, owner


class KeyIndex:
    """Where each key value occurs among the gallery's keys (identities, image ids...)."""

    def __init__(self, keys):
        self.keys = keys
        self.order = torch.sort(keys, stable=True).indices
        self.values, self.counts = torch.unique_consecutive(keys[self.order], return_counts=True)
        self.starts = self.counts.cumsum(0) - self.counts

    def pairs(self, query_keys):
        """(rows, cols): every gallery column whose key equals row's key, row-major, cols ascending."""
        dev = query_keys.device
        if self.values.numel() == 0 or query_keys.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=dev)
            return empty, empty
        at = torch.searchsorted(self.values, query_keys).clamp_(max=self.values.numel() - 1)
        lengths = torch.where(self.values[at] == query_keys, self.counts[at], 0)
        idx, rows = expand(self.starts[at], lengths)
        return rows, self.order[idx]


def union(*pair_lists, num_cols):
    """Row-major union (duplicates dropped) of (rows, cols) pair lists."""
    rows = torch.cat([p[0] for p in pair_lists])
    cols = torch.cat([p[1] for p in pair_lists])
    keys = torch.unique(rows * num_cols + cols)
    return keys // num_cols, keys % num_cols


def pairs_to_mask(pairs, num_rows, num_cols):
    """Dense [num_rows, num_cols] bool mask of (rows, cols) pairs."""
    rows, cols = pairs
    mask = torch.zeros(num_rows, num_cols, dtype=torch.bool, device=rows.device)
    mask[rows, cols] = True
    return mask
