"""The image projector: the only model code f2lightning owns (CONTRIBUTING.md, "Design rules").

Attribute names follow transformers' `Florence2MultiModalProjector`, so converting a checkpoint is a prefix swap.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LearnedPositionEmbedding2D(nn.Module):
    """A column table fills the first channels (varies along x), a row table the last ones (varies along y)."""

    def __init__(self, dim: int, max_positions: int) -> None:
        super().__init__()
        self.row_embeddings = nn.Embedding(max_positions, dim // 2)
        self.column_embeddings = nn.Embedding(max_positions, dim - dim // 2)
        # Small, as transformers initialises them (std 0.02): torch's N(0, 1) default would drown the image
        # features in a sample-independent offset, and a model trained from scratch then ignores the image.
        for table in (self.row_embeddings, self.column_embeddings):
            nn.init.trunc_normal_(table.weight, std=0.02)

    def forward(self, height: int, width: int) -> torch.Tensor:
        limit = self.row_embeddings.num_embeddings
        if height > limit or width > limit:
            raise ValueError(
                f"feature map {height}x{width} exceeds the {limit}x{limit} position table "
                f"(images up to {limit * 32} px per side)"
            )
        device = self.row_embeddings.weight.device
        x_emb = self.column_embeddings(torch.arange(width, device=device))  # (w, C - C//2)
        y_emb = self.row_embeddings(torch.arange(height, device=device))  # (h, C//2)
        pos = torch.cat(
            [x_emb.unsqueeze(0).expand(height, -1, -1), y_emb.unsqueeze(1).expand(-1, width, -1)], dim=-1
        )
        return pos.permute(2, 0, 1)  # (C, h, w)


class SinusoidalEmbedding1D(nn.Module):
    """Fixed sin/cos table over "frames" (sin on even channels, cos on odd); an image is frame 0."""

    def __init__(self, dim: int, max_positions: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / half))
        angles = torch.arange(max_positions, dtype=torch.float).unsqueeze(1) * freqs.unsqueeze(0)
        table = torch.empty(max_positions, dim)
        table[:, 0::2] = torch.sin(angles)
        table[:, 1::2] = torch.cos(angles)
        # Persistent so checkpoints carry it, as transformers' and Microsoft's do.
        self.register_buffer("pos_idx_to_embed", table)

    def forward(self, frame: int = 0) -> torch.Tensor:
        return self.pos_idx_to_embed[frame]


class ImageProjector(nn.Module):
    """Last DaViT stage `(B, C, h, w)` → `(B, 1 + h*w, d_model)` image tokens for the BART encoder."""

    def __init__(self, vision_dim: int, d_model: int, max_positions: int, max_frames: int) -> None:
        super().__init__()
        self.image_position_embed = LearnedPositionEmbedding2D(vision_dim, max_positions)
        self.visual_temporal_embed = SinusoidalEmbedding1D(vision_dim, max_frames)
        self.image_projection = nn.Linear(vision_dim, d_model, bias=False)
        self.image_proj_norm = nn.LayerNorm(d_model)
        nn.init.trunc_normal_(self.image_projection.weight, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _, _, height, width = features.shape
        features = features + self.image_position_embed(height, width).to(features.dtype)
        tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = tokens + self.visual_temporal_embed(0).to(tokens.dtype)
        # A leading token holding the spatial mean summarises the whole image.
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return self.image_proj_norm(self.image_projection(tokens))
