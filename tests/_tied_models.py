"""Models whose weight another module reads too, shared by the diagnostics' tied-weight tests."""
import torch
from torch import nn


class TiedHead(nn.Module):
    """A language model's head tied to its embedding, whose lookup reads the weight too."""

    def __init__(self):
        super().__init__()
        self.emb, self.mid, self.head = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(torch.relu(self.mid(self.emb(x).mean(1))))
