"""The token-readout recogniser (advdim._trace_tokens) on a vision transformer written in plain PyTorch
the way timm and torchvision write theirs, and on the variants it must refuse (each with its reason).
The libraries' own models are in tests/zoo/test_tokens_zoo.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advdim._trace_tokens import CLASS_TOKEN, TOKEN_MEAN, TokenReadout, read_tokens


class SumAttention(nn.Module):
    """Named like an attention module (read whole), but mixes the tokens by their sum: each token's
    influence on the others does not fall as 1/N."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x.sum(dim=1, keepdim=True)


class PositionScale(nn.Module):
    """Token-wise, but with one factor per position: the tokens are not treated alike (a product with a
    parameter that varies along the tokens is refused)."""

    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, tokens)[None, :, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class Block(nn.Module):
    def __init__(self, dim: int, mixer: str, tokens: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mixer = mixer
        self.attn = SumAttention() if mixer == "sum" else nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(0.1), nn.Linear(2 * dim, dim))
        self.extra = PositionScale(tokens) if mixer == "position" else nn.Identity()
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.mixer == "sum":
            y = self.attn(y)
        else:
            y, _ = self.attn(y, y, y, need_weights=False)
        x = x + y * self.gamma
        return x + self.extra(self.mlp(self.norm2(x)))


class TinyViT(nn.Module):
    """Patch conv, ``flatten(2).transpose(1, 2)``, class token and positional embedding, pre-norm blocks,
    a final norm, ``x[:, 0]`` (or the mean of the patch tokens) and a head."""

    def __init__(self, side: int, patch: int = 4, dim: int = 16, readout: str = "cls", mixer: str = "attn",
                 kernel: int | None = None) -> None:
        super().__init__()
        self.readout = readout
        k = kernel or patch
        self.proj = nn.Conv2d(3, dim, k, stride=patch, padding=(k - patch) // 2)
        tokens = (side // patch) ** 2 + (readout == "cls")
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, mixer, tokens) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        if self.readout == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x + self.pos_embed))
        x = x[:, 0] if self.readout in ("cls", "patch0") else x.mean(dim=1)
        return self.head(x)


def test_a_class_token_vit_is_read() -> None:
    got = read_tokens(TinyViT(32), (3, 32, 32))
    assert got == TokenReadout(CLASS_TOKEN, 4, 64, 1, 16, ("blocks.0.attn", "blocks.1.attn"))


def test_a_token_mean_vit_is_read() -> None:
    got = read_tokens(TinyViT(16, readout="mean"), (3, 16, 16))
    assert isinstance(got, TokenReadout) and got.kind == TOKEN_MEAN and got.tokens == 16 and got.prefix == 0


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"mixer": "sum"}, "does not average over the tokens (its outputs change when every token is doubled)"),
    ({"mixer": "position"}, "the function mul() at node"),
    ({"readout": "patch0"}, "reads patch token 0 (no class token in front)"),
    ({"kernel": 6}, "is no patch embedding"),
])
def test_what_breaks_the_law_is_refused_with_its_reason(kwargs: dict, reason: str) -> None:
    got = read_tokens(TinyViT(16, **kwargs), (3, 16, 16))
    assert isinstance(got, list) and any(reason in r for r in got), got


def test_a_convnet_is_no_token_readout() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    got = read_tokens(net, (3, 8, 8))
    assert isinstance(got, list) and any("no patch embedding" in r for r in got)


class EncoderViT(nn.Module):
    """The same readout through ``nn.TransformerEncoder`` (pre-norm layers, ``batch_first``)."""

    def __init__(self, side: int, dim: int = 16, batch_first: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.1, batch_first=batch_first, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(self.encoder(x)[:, 0])


def test_a_transformer_encoder_vit_is_read_and_seq_first_is_refused() -> None:
    got = read_tokens(EncoderViT(16).eval(), (3, 16, 16))
    assert got == TokenReadout(CLASS_TOKEN, 4, 16, 1, 16, ("encoder",))
    bad = read_tokens(EncoderViT(16, batch_first=False).eval(), (3, 16, 16))
    assert isinstance(bad, list) and any("not batch_first" in r for r in bad), bad


def test_a_module_the_reader_does_not_foresee_gives_reasons_not_a_traceback() -> None:
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = nn.functional.conv2d(x, torch.ones(4, 3, 4, 4), stride=4).flatten(2).transpose(1, 2)
            return t[:, :, 0].sum(1, keepdim=True)  # a feature of every token, summed

    got = read_tokens(Odd(), (3, 8, 8))
    assert isinstance(got, list) and got
