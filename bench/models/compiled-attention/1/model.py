"""compiled-attention: an attention encoder over a group's items, as a plain PyTorch module.

The pytorch2 benchmark's larger model: four attention blocks, so
torch.compile has far more to trace and compile than compiled-encoder's two
linear layers, with the same inputs and output. Triton's PyTorch 2 runtime
serves the first ``torch.nn.Module`` subclass of this file by name
(``dir()`` order), hence ``AttentionEncoder`` before ``EncoderBlock``.
Nothing here knows about Triton.
"""

import math

import torch


class EncoderBlock(torch.nn.Module):
    """Masked self-attention over the items of a group, then a feed-forward layer."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)
        self.norm1 = torch.nn.LayerNorm(dim)
        self.ff = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
        self.norm2 = torch.nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, items, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)

        def split(t):
            return t.reshape(batch, items, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads)
        scores = scores.masked_fill(~keep[:, None, None, :], -1e9)
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, items, dim)
        x = x + self.out(attended)
        return x + self.ff(self.norm2(x))


class AttentionEncoder(torch.nn.Module):
    """Project the items, run the attention blocks, average the kept items."""

    def __init__(self, feature_dim: int = 64, dim: int = 128, heads: int = 4, blocks: int = 4, output_dim: int = 16):
        super().__init__()
        self.embed = torch.nn.Linear(feature_dim, dim)
        self.blocks = torch.nn.ModuleList(EncoderBlock(dim, heads) for _ in range(blocks))
        self.head = torch.nn.Linear(dim, output_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask != 0
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, keep)
        weights = keep.to(h.dtype).unsqueeze(-1)
        pooled = (h * weights).sum(dim=-2) / weights.sum(dim=-2).clamp(min=1.0)
        return self.head(pooled)
