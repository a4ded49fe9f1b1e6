"""Image transforms: the upstream CLIP-ReID / TransReID recipe, and PCL-CLIP's own."""
import math
import random

import torch
import torchvision.transforms as T
from timm.data.random_erasing import RandomErasing

BICUBIC = T.InterpolationMode.BICUBIC


def build_transforms(cfg, is_train=True):
    """Train: resize (bicubic), flip, pad + random crop, normalise, random erasing.
    Test: resize, normalise.

    CLIP-ReID (and the baseline) resize test images bilinearly and erase with timm's
    per-pixel noise; PCL-CLIP resizes every image bicubically and fills the erased box with
    INPUT.PIXEL_MEAN (`MeanErasing`)."""
    pcl = cfg.MODEL.METHOD == 'pcl'
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if not is_train:
        resize = T.Resize(cfg.INPUT.SIZE_TEST, interpolation=BICUBIC) if pcl \
            else T.Resize(cfg.INPUT.SIZE_TEST)
        return T.Compose([resize, T.ToTensor(), normalize])
    if pcl:
        erasing = MeanErasing(cfg.INPUT.RE_PROB, cfg.INPUT.PIXEL_MEAN)
    else:  # timm's erasing (as upstream): one box filled with per-pixel normal noise
        erasing = RandomErasing(probability=cfg.INPUT.RE_PROB, mode='pixel', max_count=1,
                                device='cpu')
    return T.Compose([
        T.Resize(cfg.INPUT.SIZE_TRAIN, interpolation=BICUBIC),
        T.RandomHorizontalFlip(p=cfg.INPUT.PROB),
        T.Pad(cfg.INPUT.PADDING),
        T.RandomCrop(cfg.INPUT.SIZE_TRAIN),
        T.ToTensor(),
        normalize,
        erasing,
    ])


class MeanErasing:
    """Random erasing (Zhong et al., AAAI 2020) as PCL-CLIP samples it: with probability p,
    up to 100 tries of a box of area U(0.02, 0.4) x image area and aspect U(0.3, 1 / 0.3); the
    first box that fits strictly inside the image is filled with the constant `mean` per
    channel (normalised images, so the fill is not the dataset's mean colour).

    Written here because torchvision's RandomErasing draws the aspect log-uniformly with 10
    tries, and timm's fills with noise: both would change PCL's augmentation distribution.
    Uses Python's `random`, which DataLoader workers seed per worker.
    """

    def __init__(self, probability=0.5, mean=(0.5, 0.5, 0.5), area=(0.02, 0.4), min_aspect=0.3):
        self.probability, self.fill = probability, torch.tensor(mean).view(-1, 1, 1)
        self.area, self.min_aspect = area, min_aspect

    def __call__(self, img):
        if random.uniform(0, 1) >= self.probability:
            return img
        height, width = img.shape[1:]
        for _ in range(100):
            target = random.uniform(*self.area) * height * width
            aspect = random.uniform(self.min_aspect, 1 / self.min_aspect)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                top = random.randint(0, height - h)
                left = random.randint(0, width - w)
                img[:, top:top + h, left:left + w] = self.fill
                return img
        return img
