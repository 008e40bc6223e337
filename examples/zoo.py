"""Networks written the way researchers write them (plain PyTorch), for ``advdim measure``,
``advdim train --arch`` and ``advdim experiment dimension --arch``.

Each is an ``nn.Module`` factory taking ``input_shape = (C, H, W)``:

- :func:`resnet_small`: a torchvision-style post-activation ResNet (BasicBlocks conv-BN-ReLU-conv-BN,
  a 1x1 conv + BN projection when the shape changes, ReLU after the add, global average pool, fc),
  ``kaiming_normal_(mode="fan_out")`` as torchvision initialises it;
- :func:`vit_small`: a timm-style ViT (patch conv with a fixed patch side, class token, learned
  positional embedding, pre-norm ``nn.TransformerEncoderLayer`` blocks with GELU, the class token's
  final LayerNorm and a linear head): more tokens as the input grows.

    advdim experiment dimension --arch examples/zoo.py:resnet_small
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetSmall(nn.Module):
    def __init__(self, channels: int, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_small(input_shape: tuple[int, int, int]) -> nn.Module:
    """A two-block post-activation ResNet (16 then 32 channels) for ``input_shape``."""
    return ResNetSmall(input_shape[0])


class ViTSmall(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], patch: int = 7, dim: int = 32, depth: int = 2,
                 heads: int = 2, classes: int = 10) -> None:
        super().__init__()
        c, h, w = input_shape
        if h % patch or w % patch:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch side {patch}")
        tokens = (h // patch) * (w // patch)
        self.patch_embed = nn.Conv2d(c, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_small(input_shape: tuple[int, int, int]) -> nn.Module:
    """A two-block ViT with 7x7 patches, a class token and a learned positional embedding."""
    return ViTSmall(input_shape)
