"""What one training epoch iterates."""
from utils.errors import ReIDError


class EpochBatches:
    """The batches of one epoch: the loader's own pass, or `limit` batches taken from fresh
    passes as needed (PCL's SOLVER.ITERS). Samplers are re-seeded for each pass."""

    def __init__(self, loader, epoch, limit=None):
        self.loader, self.epoch, self.limit = loader, epoch, limit

    def __len__(self):
        return self.limit or len(self.loader)

    def _set_epoch(self, value):
        for obj in (self.loader.sampler, getattr(self.loader, 'batch_sampler', None)):
            if hasattr(obj, 'set_epoch'):
                obj.set_epoch(value)

    def __iter__(self):
        produced, sweep = 0, 0
        while produced < len(self):
            self._set_epoch(self.epoch * 1000 + sweep if self.limit else self.epoch)
            for batch in self.loader:
                yield batch
                produced += 1
                if produced == len(self):
                    return
            if produced == 0 or not self.limit:
                break
            sweep += 1
        if produced == 0:
            raise ReIDError('the training loader yields no batches (is the train split empty?)')
