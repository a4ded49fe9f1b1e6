"""Occluded-DukeMTMC (Miao et al., ICCV 2019): DukeMTMC-reID's layout and names.

Layout under DATASETS.ROOT_DIR: dukemtmcreid/Occluded_Duke/{bounding_box_train, query,
bounding_box_test}/0001_c2_f0046182.jpg (also accepted: Occluded_Duke/ under ROOT_DIR).
"""
from .market1501 import Market1501


class OccludedDukeMTMCreID(Market1501):
    folder_names = ('dukemtmcreid/Occluded_Duke', 'Occluded_Duke', 'Occluded-Duke',
                    'occluded_duke', 'occ_duke')
    name_example = '0001_c2_f0046182.jpg'
