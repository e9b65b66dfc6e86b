"""Exact decomposition of a ViT CLIP image embedding into per-head and per-MLP terms.

For open_clip's ``VisionTransformer`` with class-token pooling, the class token's residual after the
last block is a sum: the ``ln_pre`` output (input-embedding term) plus, for every block, the attention
output (a sum over heads, plus the ``out_proj`` bias) and the MLP output. The final LayerNorm is linear
once its standard deviation is fixed from the full residual, so every term ``c`` is mapped as

    gamma * (c - mean(c)) / sigma @ proj

with ``sigma`` that image's own LayerNorm standard deviation. Centring is linear, so each term is
centred by its own mean; the sum of the centred terms is the centred residual, exactly as LayerNorm
computes it (the published code splits the image's mean uniformly over the terms instead, which makes a
head's term depend on the number of terms). LayerNorm's ``beta @ proj`` and the ``out_proj`` biases are
input-independent up to ``sigma`` and form their own ``bias`` term. The terms sum to the model's own
unnormalised image embedding; :func:`reconstruction_error` measures it.

Memory: only the class-token row is decomposed. Per block the attention of the class query is
(B, heads, tokens) and the per-head outputs (B, heads, width) -- never a B x tokens x tokens x heads x
width tensor. Per-source-token terms (B, heads, tokens, D) are computed only for the blocks asked for.

Shapes: B images, L blocks, H heads per block, T tokens (class token first), W width, D output dim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from clipguard.errors import ConfigError

__all__ = ["Decomposition", "SUPPORTED", "check_decomposable", "decompose_images", "reconstruction_error",
           "tower_shape"]

SUPPORTED = ("open_clip ViT image towers with class-token pooling and standard attention blocks "
             "(e.g. tiny-vit, ViT-B-32, ViT-B-16, ViT-L-14)")


@dataclass
class Decomposition:
    """Terms of a batch of image embeddings, each in the output space (before L2 normalisation).

    Attributes:
        embedding: (B, D) the input-embedding term (class token after ``ln_pre``).
        heads: (B, L, H, D) one term per attention head per block.
        mlps: (B, L, D) one term per MLP per block.
        bias: (B, D) LayerNorm beta @ proj plus every block's ``out_proj`` bias through the LayerNorm.
        tokens: {block: (B, H, T, D)} per-source-token head terms of the blocks asked for
            (``tokens[l].sum(2) == heads[:, l]``).
        sigma: (B,) each image's final-LayerNorm standard deviation.
    """

    embedding: torch.Tensor
    heads: torch.Tensor
    mlps: torch.Tensor
    bias: torch.Tensor
    tokens: dict[int, torch.Tensor]
    sigma: torch.Tensor

    def total(self) -> torch.Tensor:
        """(B, D) the sum of every term: the model's unnormalised image embedding."""
        return self.embedding + self.heads.sum((1, 2)) + self.mlps.sum(1) + self.bias

    def subset(self, idx: Sequence[int] | torch.Tensor) -> "Decomposition":
        """The decomposition of the images ``idx`` (per-token terms included)."""
        i = torch.as_tensor(idx, dtype=torch.long)
        return Decomposition(self.embedding[i], self.heads[i], self.mlps[i], self.bias[i],
                             {k: v[i] for k, v in self.tokens.items()}, self.sigma[i])

    def to(self, device: str | torch.device) -> "Decomposition":
        """A copy on ``device``."""
        return Decomposition(self.embedding.to(device), self.heads.to(device), self.mlps.to(device),
                             self.bias.to(device), {k: v.to(device) for k, v in self.tokens.items()},
                             self.sigma.to(device))


def check_decomposable(visual: torch.nn.Module, name: str = "this model") -> VisionTransformer:
    """Return ``visual`` if it is a supported ViT tower, else raise a one-line ConfigError."""
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(f"{name}: head analysis needs a ViT image tower, not {type(visual).__name__}; "
                          f"supported: {SUPPORTED}")
    blocks = list(visual.transformer.resblocks)
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise ConfigError(f"{name}: head analysis needs class-token pooling (this tower pools with "
                          f"{'attention pooling' if visual.attn_pool is not None else visual.pool_type!r}); "
                          f"supported: {SUPPORTED}")
    if not all(isinstance(b, ResidualAttentionBlock) and isinstance(b.attn, torch.nn.MultiheadAttention)
               and not hasattr(b, "ln_1_kv") for b in blocks):
        raise ConfigError(f"{name}: head analysis needs standard attention blocks (this tower uses "
                          f"{type(blocks[0]).__name__}); supported: {SUPPORTED}")
    if visual.proj is None:
        raise ConfigError(f"{name}: the ViT tower has no output projection; supported: {SUPPORTED}")
    return visual


def tower_shape(visual: torch.nn.Module) -> tuple[int, int, int]:
    """(L blocks, H heads per block, D output dim) of a supported ViT tower."""
    v = check_decomposable(visual)
    blocks = v.transformer.resblocks
    return len(blocks), int(blocks[0].attn.num_heads), int(v.proj.shape[1])


def _block_terms(block: ResidualAttentionBlock, x: torch.Tensor, want_tokens: bool):
    """Run one block on the full sequence ``x`` (B, T, W) and decompose its class-token row.

    Returns (x_next (B,T,W), heads (B,H,W), out_bias (W,), mlp (B,W), tokens (B,H,T,W) or None).
    """
    attn = block.attn
    n_heads, width = attn.num_heads, x.shape[-1]
    dh = width // n_heads
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    B, T = x.shape[:2]
    q, k, v = (t.reshape(B, T, n_heads, dh).transpose(1, 2) for t in (q, k, v))  # (B, H, T, dh)
    full = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, dh)
    attn_out = F.linear(full.transpose(1, 2).reshape(B, T, width), attn.out_proj.weight, attn.out_proj.bias)
    x_mid = x + block.ls_1(attn_out)
    mlp_out = block.ls_2(block.mlp(block.ln_2(x_mid)))
    # class-token row, per head: softmax(q_cls k^T / sqrt(dh)) v, times that head's slice of out_proj
    weights = torch.softmax((q[:, :, :1] @ k.transpose(-1, -2)).squeeze(2) * dh ** -0.5, dim=-1)  # (B, H, T)
    w_o = attn.out_proj.weight.view(width, n_heads, dh).permute(1, 2, 0)  # (H, dh, W)
    head_out = torch.einsum("bht,bhtd->bhd", weights, v)
    heads = block.ls_1(torch.einsum("bhd,hdw->bhw", head_out, w_o))
    out_bias = block.ls_1(attn.out_proj.bias) if attn.out_proj.bias is not None else x.new_zeros(width)
    tokens = None
    if want_tokens:
        tokens = block.ls_1(torch.einsum("bht,bhtd,hdw->bhtw", weights, v, w_o))
    return x_mid + mlp_out, heads, out_bias, mlp_out[:, 0], tokens


def _through_ln_post(visual: VisionTransformer, terms: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Map residual terms (B, ..., W) through the final LayerNorm's linear part and the projection."""
    ln = visual.ln_post
    shape = (-1,) + (1,) * (terms.dim() - 1)
    centred = terms - terms.mean(-1, keepdim=True)
    return (ln.weight * centred / sigma.view(shape)) @ visual.proj


@torch.no_grad()
def decompose_images(visual: torch.nn.Module, images: torch.Tensor, *,
                     token_layers: Iterable[int] = ()) -> Decomposition:
    """Decompose the image embeddings of ``images`` (B, 3, H, W) into per-head and per-MLP terms.

    Args:
        visual: an open_clip ViT image tower (``model.visual``) with class-token pooling.
        images: preprocessed images on the tower's device.
        token_layers: blocks whose head terms are also returned per source token (negative indices
            count from the end).

    Raises:
        ConfigError: the tower is not a supported ViT (one line naming the supported architectures).
    """
    v = check_decomposable(visual)
    blocks = list(v.transformer.resblocks)
    want = {int(i) % len(blocks) for i in token_layers}
    dtype = v.conv1.weight.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"the decomposition runs in float32 or float64, the tower is {dtype}; call model.float()")
    x = v._embeds(images.to(dtype))
    if not getattr(v.transformer, "batch_first", True):
        raise ConfigError(f"head analysis needs a batch-first transformer; supported: {SUPPORTED}")
    residual = [x[:, 0]]
    heads, mlps, token_terms = [], [], {}
    bias = x.new_zeros(x.shape[-1])
    for i, block in enumerate(blocks):
        x, h, b, m, tok = _block_terms(block, x, i in want)
        heads.append(h)
        mlps.append(m)
        bias = bias + b
        if tok is not None:
            token_terms[i] = tok
    heads_t, mlps_t = torch.stack(heads, 1), torch.stack(mlps, 1)  # (B, L, H, W), (B, L, W)
    ln = v.ln_post
    total = residual[0] + heads_t.sum((1, 2)) + mlps_t.sum(1) + bias
    sigma = torch.sqrt(total.var(-1, unbiased=False) + ln.eps)
    bias_term = _through_ln_post(v, bias.expand_as(total), sigma) + (ln.bias @ v.proj if ln.bias is not None else 0)
    return Decomposition(
        embedding=_through_ln_post(v, residual[0], sigma),
        heads=_through_ln_post(v, heads_t, sigma),
        mlps=_through_ln_post(v, mlps_t, sigma),
        bias=bias_term,
        tokens={i: _through_ln_post(v, t, sigma) for i, t in token_terms.items()},
        sigma=sigma,
    )


@torch.no_grad()
def reconstruction_error(visual: torch.nn.Module, images: torch.Tensor, decomposition: Decomposition | None = None
                         ) -> float:
    """Largest relative error ``max_i |sum of terms_i - f(x_i)| / |f(x_i)|`` against the model's own
    forward pass (``visual(images)``, unnormalised)."""
    d = decomposition if decomposition is not None else decompose_images(visual, images)
    ref = visual(images)
    err = (d.total().to(ref.dtype) - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)
    return float(err.max())
