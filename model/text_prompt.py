"""CLIP-ReID's text side: the per-identity prompt learner and the frozen CLIP text encoder."""
import open_clip
import torch
import torch.nn as nn

from utils.errors import ReIDError

# Token the template uses as a placeholder for the learnable context ('X' in the paper).
_PLACEHOLDER = 'X'


class TextEncoder(nn.Module):
    """CLIP's text transformer run on prompt embeddings; pools the EOT token, then projects."""

    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer('attn_mask', clip_model.attn_mask.clone(), persistent=False)

    def forward(self, prompts, tokenized_prompts):
        x = prompts + self.positional_embedding.to(prompts.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        eot = tokenized_prompts.argmax(dim=-1).expand(x.shape[0])  # EOT has the largest id
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


class PromptLearner(nn.Module):
    """"A photo of a X X X X <object>." with the X embeddings learned per identity (cls_ctx).

    token_prefix / token_suffix are buffers (saved in checkpoints, as upstream does).
    """

    def __init__(self, num_class, object_word, n_ctx, token_embedding, context_length):
        super().__init__()
        if n_ctx < 1:
            raise ReIDError(f'MODEL.PROMPT_N_CTX must be >= 1, got {n_ctx}')
        object_word = str(object_word).replace('_', ' ').strip()
        text = f'A photo of a {" ".join([_PLACEHOLDER] * n_ctx)} {object_word}.'
        tokens = open_clip.tokenize(text, context_length=context_length)
        place_id = open_clip.tokenize(_PLACEHOLDER)[0, 1].item()
        where = (tokens[0] == place_id).nonzero().flatten()
        start = where[0].item()
        if len(where) != n_ctx or where[-1].item() != start + n_ctx - 1:
            raise ReIDError(f'MODEL.PROMPT_OBJECT {object_word!r} does not fit the prompt '
                            f'template {text!r}')
        with torch.no_grad():
            embedding = token_embedding(tokens).float()
        dim = embedding.shape[-1]
        self.cls_ctx = nn.Parameter(torch.empty(num_class, n_ctx, dim).normal_(std=0.02))
        self.register_buffer('token_prefix', embedding[:, :start].clone())
        self.register_buffer('token_suffix', embedding[:, start + n_ctx:].clone())
        self.register_buffer('tokenized_prompts', tokens, persistent=False)
        self.text = text
        self.num_class = num_class

    def forward(self, label):
        ctx = self.cls_ctx[label.to(self.cls_ctx.device)]
        b = ctx.shape[0]
        return torch.cat([self.token_prefix.expand(b, -1, -1), ctx,
                          self.token_suffix.expand(b, -1, -1)], dim=1)
