"""CLIP image towers adapted for re-ID (CLIP-ReID's changes), around open_clip's modules.

Both encoders keep the OpenAI parameter names (so `image_encoder.*` keys match upstream
checkpoints) and return three [B, C] features: (intermediate, final, projected).
"""
import logging

import torch
import torch.nn as nn

from utils.errors import ReIDError

from .clip_backbone import resize_grid

logger = logging.getLogger(__name__)


def vit_grid(size, patch, stride):
    """Patch grid of a conv with kernel `patch` and stride `stride` over an image of `size`."""
    return tuple((s - patch) // st + 1 for s, st in zip(size, stride))


class ReIDViT(nn.Module):
    """ViT with patch stride `stride` (overlapping when < patch) and a grid sized to the input.

    forward -> (class token after the second-to-last block, class token of the last block
    after ln_post, its projection). `cv_embed` [B, width] is added to the class token only.
    """

    def __init__(self, visual, input_size, stride):
        super().__init__()
        patch = visual.conv1.kernel_size[0]
        self.conv1 = visual.conv1
        self.conv1.stride = tuple(stride)
        self.class_embedding = visual.class_embedding
        old = visual.positional_embedding.shape[0] - 1
        side = round(old ** 0.5)
        self.grid = vit_grid(input_size, patch, stride)
        if max(stride) > patch:
            logger.warning('MODEL.STRIDE_SIZE %s is larger than the %d-pixel patch: pixels '
                           'between patches are never seen', list(stride), patch)
        self.positional_embedding = nn.Parameter(
            resize_grid(visual.positional_embedding.data, (side, side), self.grid))
        self.ln_pre = visual.ln_pre
        self.transformer = visual.transformer
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.output_dim = self.proj.shape[1]
        self.width = self.proj.shape[0]
        logger.info('ViT position grid %dx%d resized to %dx%d (input %s, stride %s)',
                    side, side, *self.grid, tuple(input_size), tuple(stride))

    # Parameters before the first block: patch projection, class and position embeddings,
    # the LayerNorm before the blocks.
    _EMBEDDINGS = ('conv1.', 'class_embedding', 'positional_embedding', 'ln_pre.')

    def decay_depths(self):
        """{parameter name: exponent of the layer-wise LR decay}: block i of L (from 0) gets
        L - i, the embeddings L + 1, what follows the blocks (ln_post, proj) 0, as BEiT's
        fine-tuning recipe counts them."""
        blocks = len(self.transformer.resblocks)
        depths = {}
        for name, _ in self.named_parameters():
            if name.startswith('transformer.resblocks.'):
                depths[name] = blocks - int(name.split('.')[2])
            elif name.startswith(self._EMBEDDINGS):
                depths[name] = blocks + 1
            else:
                depths[name] = 0
        return depths

    def forward(self, x, cv_embed=None):
        x = self.conv1(x.to(self.conv1.weight.dtype))
        if tuple(x.shape[2:]) != self.grid:
            raise ReIDError(f'the input gives a {tuple(x.shape[2:])} patch grid but the model '
                            f'was built for {self.grid} (INPUT.SIZE_TRAIN); give INPUT.SIZE_TEST '
                            'the same size')
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        if cv_embed is not None:
            cls = cls + cv_embed.to(x.dtype)[:, None, :]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        blocks = self.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        before_last = x[:, 0]
        last = self.ln_post(blocks[-1](x)[:, 0])
        return before_last, last, last @ self.proj


def _res_grid(size, last_stride):
    """Side of ModifiedResNet's last feature map: stem conv /2 (ceil), pools /2, /2, /2, /ls."""
    side = (size + 1) // 2
    for step in (2, 2, 2, last_stride):
        side //= step
    return side


class ReIDResNet(nn.Module):
    """ModifiedResNet with layer4 stride `last_stride` and the attention-pool grid sized to
    the input. forward -> (pooled layer3, pooled layer4, attention-pool projection)."""

    def __init__(self, visual, input_size, last_stride):
        super().__init__()
        for name in ('conv1', 'bn1', 'act1', 'conv2', 'bn2', 'act2', 'conv3', 'bn3', 'act3',
                     'avgpool', 'layer1', 'layer2', 'layer3', 'layer4', 'attnpool'):
            setattr(self, name, getattr(visual, name))
        if last_stride not in (1, 2):
            raise ReIDError(f'MODEL.LAST_STRIDE must be 1 or 2, got {last_stride}')
        if last_stride == 1:  # OpenAI's blocks downsample by average pooling, so drop the pools
            first = self.layer4[0]
            first.avgpool = nn.Identity()
            first.downsample[0] = nn.Identity()  # the '-1' AvgPool2d
            first.stride = 1
        old = self.attnpool.positional_embedding.shape[0] - 1
        side = round(old ** 0.5)
        self.grid = tuple(_res_grid(s, last_stride) for s in input_size)
        self.attnpool.positional_embedding = nn.Parameter(
            resize_grid(self.attnpool.positional_embedding.data, (side, side), self.grid))
        self.output_dim = self.attnpool.c_proj.out_features
        self.width = self.attnpool.c_proj.in_features
        logger.info('ResNet attention-pool grid %dx%d resized to %dx%d (input %s, last stride '
                    '%d)', side, side, *self.grid, tuple(input_size), last_stride)

    def forward(self, x, cv_embed=None):
        if cv_embed is not None:
            raise ReIDError('SIE camera/view embeddings need a ViT backbone')
        x = x.to(self.conv1.weight.dtype)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.act3(self.bn3(self.conv3(x))))
        x3 = self.layer3(self.layer2(self.layer1(x)))
        x4 = self.layer4(x3)
        if tuple(x4.shape[2:]) != self.grid:
            raise ReIDError(f'the input gives a {tuple(x4.shape[2:])} feature map but the model '
                            f'was built for {self.grid} (INPUT.SIZE_TRAIN); give INPUT.SIZE_TEST '
                            'the same size')
        return x3.mean(dim=(2, 3)), x4.mean(dim=(2, 3)), self.attnpool(x4)


def make_image_encoder(clip_model, arch, input_size, stride, last_stride):
    if arch.is_vit:
        return ReIDViT(clip_model.visual, input_size, stride)
    return ReIDResNet(clip_model.visual, input_size, last_stride)
