"""Image transforms: the upstream CLIP-ReID / TransReID recipes."""
import torchvision.transforms as T
from timm.data.random_erasing import RandomErasing


def build_transforms(cfg, is_train=True):
    """Train: resize (bicubic), flip, pad + random crop, normalise, random erasing.
    Test: resize, normalise."""
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if not is_train:
        return T.Compose([T.Resize(cfg.INPUT.SIZE_TEST), T.ToTensor(), normalize])
    return T.Compose([
        T.Resize(cfg.INPUT.SIZE_TRAIN, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=cfg.INPUT.PROB),
        T.Pad(cfg.INPUT.PADDING),
        T.RandomCrop(cfg.INPUT.SIZE_TRAIN),
        T.ToTensor(),
        normalize,
        # timm's erasing (as upstream): one box filled with per-pixel normal noise
        RandomErasing(probability=cfg.INPUT.RE_PROB, mode='pixel', max_count=1, device='cpu'),
    ])
