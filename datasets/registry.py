"""DATASETS.NAMES -> loader class, and init_dataset."""
from utils.errors import ReIDError

from .animal import Animals
from .cuhk03_np import CUHK03NP
from .custom import CustomDataset
from .dukemtmcreid import DukeMTMCreID
from .joint import JointDataset, check_list_keys
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
    'cuhk03_np': CUHK03NP,
    'veri': VeRi,
    'VehicleID': VehicleID,
    'animals': Animals,
    'custom': CustomDataset,
}


def registered_name(name, key='DATASETS.NAMES'):
    """The registry's spelling of a dataset name (the registry is case-insensitive)."""
    by_lower = {k.lower(): k for k in DATASET_REGISTRY}
    found = by_lower.get(str(name).lower())
    if found is None:
        raise ReIDError(f'unknown dataset {key}={name!r}; known: {", ".join(DATASET_REGISTRY)}')
    return found


def dataset_names(value, key='DATASETS.NAMES'):
    """The registry names of a NAMES / TEST_NAMES value (one name or a list); a name given
    twice, or two list-file datasets that would read the same list keys, stop here."""
    names = [value] if isinstance(value, str) else list(value)
    found = [registered_name(n, key) for n in names]
    twice = sorted({n for n in found if found.count(n) > 1})
    if twice:
        raise ReIDError(f'{key} names {", ".join(twice)} twice: {tuple(names)}')
    check_list_keys(found, [DATASET_REGISTRY[n] for n in found], key)
    return found


SAME_IMAGES = {'dukemtmc', 'occ_duke'}  # datasets whose images overlap: no union of them


def init_dataset(name, root='', **kwargs):
    """Build the dataset registered as `name` (case-insensitive) from the folder `root`;
    a list of several names builds their union (datasets.joint.JointDataset)."""
    names = dataset_names(name)
    if len(names) == 1:
        return DATASET_REGISTRY[names[0]](root=root, **kwargs)
    if SAME_IMAGES <= set(names):
        raise ReIDError('DATASETS.NAMES: dukemtmc and occ_duke hold the same images '
                        '(Occluded-Duke is cut from DukeMTMC-reID): their union would give '
                        'each person two identities; train on one of them')
    parts = [(n, DATASET_REGISTRY[n](root=root, **kwargs)) for n in names]
    return JointDataset(parts, verbose=kwargs.get('verbose', True))
