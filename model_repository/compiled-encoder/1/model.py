"""compiled-encoder: model-v1's network as a plain PyTorch module.

Triton's PyTorch 2 runtime imports this file, builds the first
``torch.nn.Module`` subclass it finds, loads ``model.pt`` (a state dict)
beside it, and serves ``torch.compile(model)``. Nothing here knows about
Triton or about the warmup.
"""

import torch


class MaskedPoolingEncoder(torch.nn.Module):
    """Encode every item of a group, then average the items the mask keeps."""

    def __init__(self, feature_dim: int = 64, hidden_dim: int = 128, output_dim: int = 16):
        super().__init__()
        self.encode = torch.nn.Sequential(
            torch.nn.Linear(feature_dim, hidden_dim),
            torch.nn.GELU(),
            torch.nn.Linear(hidden_dim, hidden_dim),
        )
        self.head = torch.nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        encoded = self.encode(x)
        weights = (mask != 0).to(encoded.dtype).unsqueeze(-1)
        kept = weights.sum(dim=-2).clamp(min=1.0)
        pooled = (encoded * weights).sum(dim=-2) / kept
        return self.head(pooled)
