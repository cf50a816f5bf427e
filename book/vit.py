"""The Vision Transformer (Dosovitskiy et al., 2021) from the book's encoder (chapter 12).

An image becomes a sequence: cut it into patches, flatten and embed each one, put a
class token in front, add positions, and chapter 07's ``EncoderLayer`` does the rest.

* ``ViTConfig``: the numbers that define a model (image, patch, width, depth, pooling,
  positions);
* ``patchify``: (B, C, H, W) -> (B, N, C·p·p), patches row by row, each flattened as
  (C, p, p);
* ``PatchEmbedding``: a linear map of every flattened patch, the same as a strided
  ``Conv2d`` (``as_conv2d``);
* ``sinusoidal_2d``: fixed 2-D positions, half the features for the row, half for the
  column;
* ``ViT``: patch embedding, class token (or mean pooling), positions, pre-LN encoder
  layers with GELU, a final LayerNorm and a linear head; ``attention_maps()`` returns
  every layer's weights;
* ``attention_rollout``: Abnar & Zuidema (2020), attention through all layers, with the
  residual connection as an identity and each row renormalised;
* ``SmallCNN``: the two-convolution network the ViT is compared with; ``predict`` and
  ``count_parameters`` serve both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from book.layers import EncoderLayer, LayerNorm, LayerOptions
from book.positional import sinusoidal_positional_encoding

POOLS = ("cls", "mean")
POSITIONS = ("learned", "sinusoidal_2d", "none")


@dataclass(frozen=True)
class ViTConfig:
    """A small ViT for 28 × 28 digits; the defaults are chapter 12's model."""

    image_size: int = 28
    patch_size: int = 7
    channels: int = 1
    num_classes: int = 10
    d_model: int = 64
    num_heads: int = 4
    d_ff: int = 128
    num_layers: int = 4
    dropout: float = 0.0
    pool: str = "cls"  # "cls": read the class token; "mean": average the patch tokens
    positions: str = "learned"  # "learned" (1-D table), "sinusoidal_2d" (fixed) or "none"

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, "
                             f"got {self.positions!r}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size  # patches along each side

    @property
    def num_patches(self) -> int:
        return self.grid ** 2

    @property
    def seq_len(self) -> int:
        return self.num_patches + (self.pool == "cls")  # the class token is one more

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size ** 2  # numbers in one flattened patch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C·p·p): N = (H/p)·(W/p) patches, row by row from the top
    left; each patch flattened channel by channel, then row by row, as a Conv2d kernel."""
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image {H}×{W} cannot be cut into {p}×{p} patches")
    x = images.reshape(B, C, H // p, p, W // p, p)  # (B, C, grid_h, p, grid_w, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, grid_h, grid_w, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C·p·p)


class PatchEmbedding(nn.Module):
    """Every flattened patch through one linear map: (B, C, H, W) -> (B, N, d_model)."""

    def __init__(self, patch_size: int, channels: int, d_model: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(channels * patch_size ** 2, d_model)  # weight (d, C·p·p)

    def forward(self, images):
        return self.proj(patchify(images, self.patch_size))  # (B, N, d_model)

    def as_conv2d(self) -> nn.Conv2d:
        """The same map as a convolution with kernel p and stride p: one output pixel
        per patch."""
        d_model, p = self.proj.out_features, self.patch_size
        channels = self.proj.in_features // p ** 2
        conv = nn.Conv2d(channels, d_model, kernel_size=p, stride=p)
        conv = conv.to(self.proj.weight.device)
        with torch.no_grad():
            conv.weight.copy_(self.proj.weight.reshape(d_model, channels, p, p))
            conv.bias.copy_(self.proj.bias)
        return conv


def sinusoidal_2d(grid: int, d_model: int) -> torch.Tensor:
    """(grid², d_model) fixed positions for a grid of patches, row by row: the first half
    of the features is the 1-D sinusoidal encoding of the patch's row, the second half
    that of its column."""
    if d_model % 4:
        raise ValueError(f"d_model must be a multiple of 4, got {d_model}")
    pe = sinusoidal_positional_encoding(grid, d_model // 2)  # (grid, d/2)
    rows = pe[:, None, :].expand(grid, grid, d_model // 2)  # (g, g, d/2): by the row
    cols = pe[None, :, :].expand(grid, grid, d_model // 2)  # (g, g, d/2): by the column
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, d_model)  # (N, d_model)


class ViT(nn.Module):
    """Vision Transformer: patches -> tokens -> the book's pre-LN encoder -> scores."""

    def __init__(self, cfg: ViTConfig = ViTConfig()):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.patch_embed = PatchEmbedding(cfg.patch_size, cfg.channels, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pool == "cls" else None
        if cfg.positions == "learned":  # a trained vector per token, class token too
            self.pos_embed = nn.Parameter(torch.randn(1, cfg.seq_len, d) * 0.02)
        elif cfg.positions == "sinusoidal_2d":  # fixed; the class token gets zeros
            table = sinusoidal_2d(cfg.grid, d)  # (N, d)
            if cfg.pool == "cls":
                table = torch.cat([torch.zeros(1, d), table])  # (N + 1, d)
            self.register_buffer("pos_embed", table[None], persistent=False)
        else:
            self.pos_embed = None
        options = LayerOptions(activation="gelu")
        self.layers = nn.ModuleList(
            EncoderLayer(d, cfg.num_heads, cfg.d_ff, cfg.dropout, norm_first=True,
                         options=options) for _ in range(cfg.num_layers))
        self.norm = LayerNorm(d)  # pre-LN layers leave the last sum unnormalised
        self.head = nn.Linear(d, cfg.num_classes)

    def embed(self, images):
        """(B, C, H, W) -> the encoder's input (B, T, d), T = N (+ 1: the class token)."""
        x = self.patch_embed(images)  # (B, N, d)
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.size(0), -1, -1)  # (B, 1, d): one for all
            x = torch.cat([cls, x], dim=1)  # (B, N + 1, d): the class token comes first
        if self.pos_embed is not None:
            x = x + self.pos_embed  # (B, T, d) + (1, T, d)
        return x

    def forward(self, images):
        """(B, C, H, W) -> logits (B, num_classes)."""
        x = self.embed(images)  # (B, T, d)
        for layer in self.layers:
            x = layer(x)  # (B, T, d): every token attends to every token, no mask
        x = self.norm(x)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # (B, d)
        return self.head(pooled)  # (B, num_classes)

    def attention_maps(self) -> torch.Tensor:
        """(num_layers, B, h, T, T): every head's weights from the last forward pass."""
        return torch.stack([layer.self_attn_weights for layer in self.layers])


def attention_rollout(attentions: torch.Tensor) -> torch.Tensor:
    """Abnar & Zuidema (2020): how much each input token flows into each output token.

    attentions: (L, B, h, T, T) -> (B, T, T). Per layer: the heads' mean W, plus the
    identity for the residual connection, each row divided by its sum; then the layers
    multiplied, the last on the left: R = A_L ⋯ A_2 A_1.
    """
    L, B, h, T, _ = attentions.shape
    eye = torch.eye(T, dtype=attentions.dtype, device=attentions.device)  # (T, T)
    a = attentions.mean(dim=2) + eye  # (L, B, T, T): heads averaged, residual added
    a = a / a.sum(dim=-1, keepdim=True)  # every row sums to 1 again
    rollout = a[0]  # (B, T, T)
    for layer in a[1:]:
        rollout = layer @ rollout  # (B, T, T): one more layer on top
    return rollout


class SmallCNN(nn.Module):
    """The baseline: two 3×3 convolutions with max-pooling, then two linear layers."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32,
                 hidden: int = 32, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # (B, w, 14, 14)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 2w, 7, 7)
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes))

    def forward(self, images):
        return self.classifier(self.features(images))  # (B, num_classes)


def count_parameters(model: nn.Module) -> int:
    """Trainable numbers in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500):
    """Logits (N, classes) for images (N, C, H, W), in eval mode, batch by batch."""
    model.eval()
    return torch.cat([model(images[i:i + batch_size])
                      for i in range(0, len(images), batch_size)])
