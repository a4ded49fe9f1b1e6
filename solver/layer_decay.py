"""Layer-wise learning-rate decay for ViT image encoders (BEiT, arXiv 2106.08254; MAE).

A pretrained block near the input changes less than one near the output: block i of L
(from 0) trains at BASE_LR * decay ** (L - i), the embeddings before the blocks at
decay ** (L + 1); everything else (the layers after the blocks, re-ID heads, SIE) at 1.
"""
import logging

from utils.checkpoint import unwrap
from utils.errors import ReIDError

logger = logging.getLogger(__name__)


def layer_decay_scales(model, decay):
    """{id(parameter): LR multiplier} for the image encoder's parameters ({} when decay is 1)."""
    if decay == 1.0:
        return {}
    encoder = getattr(unwrap(model), 'image_encoder', None)
    if not hasattr(encoder, 'decay_depths'):
        raise ReIDError(f'config key LAYER_DECAY={decay} (SOLVER.LAYER_DECAY, for CLIP-ReID '
                        'SOLVER.STAGE2.LAYER_DECAY) needs a ViT image encoder; this model has '
                        f'{type(encoder).__name__ if encoder is not None else "none"}: set it '
                        'to 1.0')
    params = dict(encoder.named_parameters())
    return {id(params[name]): decay ** depth for name, depth in encoder.decay_depths().items()}


def log_layer_decay(model, decay, base_lr):
    """One line: the LR of the first and the last block, and of the embeddings."""
    blocks = len(unwrap(model).image_encoder.transformer.resblocks)
    logger.info('layer-wise LR decay %g over %d blocks: block 1 LR %.3g, block %d LR %.3g, '
                'embeddings %.3g, heads %.3g', decay, blocks,
                base_lr * decay ** blocks, blocks, base_lr * decay,
                base_lr * decay ** (blocks + 1), base_lr)
