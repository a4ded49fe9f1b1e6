"""Build open_clip's CLIP from an OpenAI-layout state_dict, every size read from the weights
(activation and other settings from the pretraining: clip_pretrained)."""
import logging
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from utils.errors import ReIDError

from .checkpoint import mismatch_report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipArch:
    """Sizes of a CLIP model; vision_layers is an int for a ViT, a 4-tuple for a ResNet."""
    embed_dim: int
    vision_layers: Union[int, Tuple[int, int, int, int]]
    vision_width: int
    vision_patch_size: Optional[int]  # None for a ResNet
    grid_size: int  # side of the square position grid the weights were trained with
    context_length: int
    vocab_size: int
    text_width: int
    text_heads: int
    text_layers: int

    @property
    def is_vit(self):
        return self.vision_patch_size is not None

    @property
    def image_size(self):
        return self.grid_size * (self.vision_patch_size if self.is_vit else 32)

    @property
    def feature_dim(self):
        """Width of the image feature before the projection (2048 for RN50, 768 for ViT-B/16)."""
        return self.vision_width if self.is_vit else self.vision_width * 32


def _count(state_dict, prefix):
    """Number of distinct child indices under prefix ('visual.layer1.' -> blocks of layer1)."""
    depth = prefix.count('.')
    return len({k.split('.')[depth] for k in state_dict if k.startswith(prefix)})


def _square_side(n, key):
    side = round(n ** 0.5)
    if side * side != n:
        raise ReIDError(f'CLIP weights: {key} has {n} grid positions, not a square grid')
    return side


def infer_clip_arch(state_dict):
    """Read the architecture off the weights, as OpenAI's own loader does."""
    if 'visual.proj' in state_dict:
        conv = state_dict['visual.conv1.weight']
        vision_layers = _count(state_dict, 'visual.transformer.resblocks.')
        vision_width, patch = conv.shape[0], conv.shape[-1]
        grid = _square_side(state_dict['visual.positional_embedding'].shape[0] - 1,
                            'visual.positional_embedding')
    else:
        vision_layers = tuple(_count(state_dict, f'visual.layer{i}.') for i in (1, 2, 3, 4))
        vision_width, patch = state_dict['visual.layer1.0.conv1.weight'].shape[0], None
        grid = _square_side(state_dict['visual.attnpool.positional_embedding'].shape[0] - 1,
                            'visual.attnpool.positional_embedding')
    text_width = state_dict['ln_final.weight'].shape[0]
    return ClipArch(
        embed_dim=state_dict['text_projection'].shape[1],
        vision_layers=vision_layers, vision_width=vision_width, vision_patch_size=patch,
        grid_size=grid,
        context_length=state_dict['positional_embedding'].shape[0],
        vocab_size=state_dict['token_embedding.weight'].shape[0],
        text_width=text_width, text_heads=max(1, text_width // 64),
        text_layers=_count(state_dict, 'transformer.resblocks.'))


def build_clip(arch, pretraining=None):
    """An fp32 open_clip CLIP of these sizes, with the activation and tower settings of
    `pretraining` (a clip_pretrained.ClipPretraining); None = QuickGELU and open_clip's
    defaults, as OpenAI's weights need."""
    quick_gelu = True if pretraining is None else pretraining.quick_gelu
    vision_extra = {} if pretraining is None else pretraining.vision
    text_extra = {} if pretraining is None else pretraining.text
    vision = CLIPVisionCfg(layers=arch.vision_layers, width=arch.vision_width,
                           patch_size=arch.vision_patch_size or 16, image_size=arch.image_size,
                           head_width=min(64, arch.feature_dim), **vision_extra)
    text = CLIPTextCfg(context_length=arch.context_length, vocab_size=arch.vocab_size,
                       width=arch.text_width, heads=arch.text_heads, layers=arch.text_layers,
                       **text_extra)
    return CLIP(arch.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu,
                cast_dtype=None)


def load_checked(module, state_dict, source):
    """load_state_dict that reports every missing, unexpected and mis-shaped key as a ReIDError."""
    report = mismatch_report(module.state_dict(), state_dict)
    if report:
        raise ReIDError(f'{source} does not hold the CLIP model its sizes describe: {report}')
    module.load_state_dict(state_dict, strict=True)


def clip_from_state_dict(state_dict, source='CLIP weights', pretraining=None):
    """(open_clip CLIP in fp32 holding the weights, its ClipArch); see build_clip."""
    arch = infer_clip_arch(state_dict)
    model = build_clip(arch, pretraining)
    load_checked(model, state_dict, source)
    logger.info('built CLIP from %s: %s', source, arch)
    return model.float().eval(), arch


def resize_grid(posemb, old_hw, new_hw):
    """Bilinearly resize a [1 + h*w, C] position table's grid part; the first row is kept."""
    first, grid = posemb[:1], posemb[1:]
    grid = grid.reshape(1, old_hw[0], old_hw[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_hw), mode='bilinear', align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_hw[0] * new_hw[1], -1)
    return torch.cat([first.float(), grid], dim=0)
