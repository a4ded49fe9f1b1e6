"""DATASETS.NAMES -> loader class, and init_dataset."""
from utils.errors import ReIDError

from .animal import Animals
from .custom import CustomDataset
from .dukemtmcreid import DukeMTMCreID
from .market1501 import Market1501
from .msmt17 import MSMT17
from .occ_duke import OccludedDukeMTMCreID
from .vehicleid import VehicleID
from .veri import VeRi

DATASET_REGISTRY = {
    'market1501': Market1501,
    'dukemtmc': DukeMTMCreID,
    'occ_duke': OccludedDukeMTMCreID,
    'msmt17': MSMT17,
    'veri': VeRi,
    'VehicleID': VehicleID,
    'animals': Animals,
    'custom': CustomDataset,
}


def init_dataset(name, root='', **kwargs):
    """Build the dataset registered as `name` (case-insensitive) from the folder `root`."""
    by_lower = {key.lower(): cls for key, cls in DATASET_REGISTRY.items()}
    cls = DATASET_REGISTRY.get(name) or by_lower.get(str(name).lower())
    if cls is None:
        raise ReIDError(f'unknown dataset DATASETS.NAMES={name!r}; known: '
                        f'{", ".join(DATASET_REGISTRY)}')
    return cls(root=root, **kwargs)
