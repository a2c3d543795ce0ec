"""compiled-tokens: token ids through an embedding, a conv1d, SiLU and LayerNorm.

A plain PyTorch module, as a user writes it for Triton's PyTorch 2 runtime:
``token_ids`` is [batch, tokens], ``domain`` is [batch, 1] (one id per row,
added as a second embedding). Two outputs: every token's features and
their mean.
"""

import torch


class TokenConvEncoder(torch.nn.Module):
    def __init__(self, vocabulary: int = 1000, domains: int = 8, dim: int = 32):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocabulary, dim)
        self.domains = torch.nn.Embedding(domains, dim)
        self.conv = torch.nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.activation = torch.nn.SiLU()
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, token_ids: torch.Tensor, domain: torch.Tensor):
        x = self.tokens(token_ids) + self.domains(domain)
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        hidden = self.norm(self.activation(x))
        return hidden, hidden.mean(dim=1)
