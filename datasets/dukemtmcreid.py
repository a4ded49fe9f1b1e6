"""DukeMTMC-reID (Zheng et al., ICCV 2017).

Layout under DATASETS.ROOT_DIR: dukemtmcreid/DukeMTMC-reID/{bounding_box_train, query,
bounding_box_test}/<pid>_c<cam>_f<frame>.jpg, e.g. 0001_c2_f0046182.jpg (also accepted:
DukeMTMC-reID/ directly under ROOT_DIR).
"""
from .market1501 import Market1501


class DukeMTMCreID(Market1501):
    folder_names = ('dukemtmcreid/DukeMTMC-reID', 'DukeMTMC-reID', 'dukemtmc-reid')
    name_example = '0001_c2_f0046182.jpg'
