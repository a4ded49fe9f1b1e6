"""Stop on non-finite features: a diverged model must never be scored, searched or clustered.

A NaN or inf feature gives NaN distances, and a NaN distance would otherwise rank somewhere
plausible; the run stops instead, with one line that counts the bad features of each set
and names the first few images.
"""
import torch

from .errors import ReIDError

SHOWN = 3  # images named in the message


def nonfinite_rows(feats):
    """Indices of the rows of a [N, D] tensor or array that hold a NaN or an inf."""
    feats = torch.as_tensor(feats)
    if feats.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    rows = feats.reshape(feats.shape[0], -1)
    # a row's sum is finite unless the row holds a NaN or inf, or overflows: one cheap pass,
    # then the exact test of the few suspects
    suspects = (~torch.isfinite(rows.sum(1, dtype=torch.float64 if rows.dtype == torch.float64
                                          else torch.float32))).nonzero().squeeze(1)
    bad = ~torch.isfinite(rows[suspects]).all(1)
    return suspects[bad].cpu()


def check_finite(*parts):
    """parts: (name, feats [N, D], paths or None) per set, e.g. ('query', qf, q_paths).
    Raises ReIDError naming how many features of each set are not finite, and the first
    images (or row numbers when paths are unknown)."""
    counts, named = [], []
    for name, feats, paths in parts:
        rows = nonfinite_rows(feats)
        if rows.numel() == 0:
            continue
        counts.append(f'{rows.numel()} of {len(feats)} {name}')
        for r in rows[:SHOWN - len(named)].tolist():
            named.append(str(paths[r]) if paths is not None else f'{name} row {r}')
    if counts:
        raise ReIDError('features are not finite (NaN or inf; has the model diverged?): '
                        + ', '.join(counts) + '; first: ' + ', '.join(named))
