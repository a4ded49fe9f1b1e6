"""Running means of the training step's values, kept on the device.

Adding a step's values launches a few tiny kernels and never waits for the GPU; only reading
the means (every LOG_PERIOD steps and at the end of an epoch) synchronises with the host.
"""
import torch


class StepMeters:
    """Sample-weighted running means of named scalar tensors."""

    def __init__(self):
        self.sums = {}
        self.count = 0

    def update(self, values, n):
        for name, value in values.items():
            value = torch.as_tensor(value).detach().float() * n
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += n

    def means(self):
        """{name: float}: one transfer for all the values."""
        if not self.sums:
            return {}
        values = torch.stack([v.reshape(()) for v in self.sums.values()]).cpu().tolist()
        return {name: v / max(self.count, 1) for name, v in zip(self.sums, values)}


def format_means(means):
    """'loss 1.2345, acc 0.5000' for the log."""
    return ', '.join(f'{name} {value:.4f}' for name, value in means.items())
