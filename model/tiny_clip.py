"""Tiny random CLIP checkpoints in OpenAI's layout, for tests and the CPU demo.

The real tokenizer works with them (vocabulary 49408, context 77); the towers are tiny, so a
64-image batch at 128x64 trains in well under a second on a CPU. Both OpenAI formats can
be written: a plain state_dict, or a TorchScript archive whose state_dict has OpenAI's keys.

    python -m model.tiny_clip --out tiny_vit.pt --arch vit --fmt torchscript
"""
import argparse
import os
import warnings

import torch
import torch.nn as nn

from .clip_backbone import ClipArch, build_clip

# Text width 128: two attention heads (OpenAI's loaders read heads as width // 64)
_TEXT = dict(context_length=77, vocab_size=49408, text_width=128, text_heads=2, text_layers=2)
# The sizes written for each `arch`; tests compare what the loader infers with these.
TINY_ARCHS = {
    'vit': ClipArch(embed_dim=32, vision_layers=2, vision_width=64, vision_patch_size=16,
                    grid_size=4, **_TEXT),
    'rn': ClipArch(embed_dim=32, vision_layers=(1, 1, 1, 1), vision_width=8,
                   vision_patch_size=None, grid_size=2, **_TEXT),
}


class _Node(nn.Module):
    """A plain container, so archive entries keep their dotted OpenAI names."""


class _Archive(nn.Module):
    def forward(self, x):
        return x * self.logit_scale


def _as_archive(state_dict, param_names, scalars):
    root = _Archive()
    for key, tensor in list(state_dict.items()) + list(scalars.items()):
        *path, leaf = key.split('.')
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, _Node())
            node = getattr(node, part)
        if key in param_names:
            node.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
        else:
            node.register_buffer(leaf, tensor)
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is OpenAI's format
        warnings.simplefilter('ignore', FutureWarning)
        return torch.jit.trace(root, torch.ones(1))


def tiny_clip_state_dict(arch='vit', seed=0):
    """(state_dict with OpenAI's keys and dtypes, names of its parameters) of a random model."""
    if arch not in TINY_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(TINY_ARCHS)}, got {arch!r}")
    torch.manual_seed(seed)
    model = build_clip(TINY_ARCHS[arch])
    state_dict = {k: v.half() if v.is_floating_point() else v  # OpenAI ships fp16 weights
                  for k, v in model.state_dict().items()}
    return state_dict, {name for name, _ in model.named_parameters()}


def save_tiny_clip(path, arch='vit', fmt='state_dict', seed=0):
    """Write a tiny random CLIP to path (atomically) and return path."""
    state_dict, params = tiny_clip_state_dict(arch, seed)
    return write_openai_clip(path, state_dict, params, fmt, TINY_ARCHS[arch].image_size)


def write_openai_clip(path, state_dict, param_names, fmt='state_dict', image_size=224):
    """Write CLIP weights with OpenAI's keys as OpenAI ships them (atomically): a plain
    state_dict, or a TorchScript archive whose parameters are `param_names`, beside the
    scalars OpenAI's archives carry. Returns path."""
    if fmt not in ('state_dict', 'torchscript'):
        raise ValueError(f"fmt must be 'state_dict' or 'torchscript', got {fmt!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.part'
    try:
        if fmt == 'state_dict':
            torch.save(state_dict, tmp)
        else:
            scalars = {'input_resolution': torch.tensor(image_size),
                       'context_length': torch.tensor(state_dict['positional_embedding'].shape[0]),
                       'vocab_size': torch.tensor(state_dict['token_embedding.weight'].shape[0])}
            archive = _as_archive(state_dict, param_names, scalars)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', FutureWarning)
                torch.jit.save(archive, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description='Write a tiny random CLIP checkpoint.')
    parser.add_argument('--out', required=True, help='file to write')
    parser.add_argument('--arch', choices=sorted(TINY_ARCHS), default='vit')
    parser.add_argument('--fmt', choices=('state_dict', 'torchscript'), default='state_dict')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    print(save_tiny_clip(args.out, args.arch, args.fmt, args.seed))


if __name__ == '__main__':
    main()
