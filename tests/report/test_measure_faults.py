"""``advdim measure`` on models that cannot be measured, and on sizes that cannot fit: each is one line
on stderr, exit 2, and leaves the report folder as it was.

The user's factories are written by each test into a ``.py`` file in its own folder.  Those without
an ``input_shape`` parameter give one fixed model (up-sampled inputs); the ``sized_*`` ones are called
for every size and draw (per-size draws).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from advdim.cli import main

MODELS = '''
import math

import torch
from torch import nn

SHAPES = []  # the input shape of every forward pass, to see what ran


class Net(nn.Module):
    """A size-agnostic conv net with 3 logits; ``post`` rewrites its logits."""

    def __init__(self, post=None, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.head = nn.Linear(channels, 3)
        self.post = post

    def forward(self, x):
        SHAPES.append(tuple(x.shape))
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        out = self.head(h)
        return out if self.post is None else self.post(x, out)


class Poison(torch.autograd.Function):
    """The identity, with a backward pass of NaN or infinite values."""

    @staticmethod
    def forward(ctx, x, value):
        ctx.value = value
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, ctx.value), None


def good():
    return Net()

def nan_logits():
    return Net(lambda x, out: out * math.nan)

def inf_logits():
    return Net(lambda x, out: out + math.inf)

def nan_gradient():
    net = Net()
    forward = net.forward
    net.forward = lambda x: forward(Poison.apply(x, math.nan))
    return net

def inf_gradient():
    net = Net()
    forward = net.forward
    net.forward = lambda x: forward(Poison.apply(x, math.inf))
    return net

def zero_gradient():
    return Net(lambda x, out: 0 * out + 0 * x.flatten(1).sum(1, keepdim=True))

def detached():
    return Net(lambda x, out: out.detach())

def flat():
    return Net(lambda x, out: out[:, 0])

def extra_dim():
    return Net(lambda x, out: out[..., None])

def pair():
    return Net(lambda x, out: (out, out))

def labels():
    return Net(lambda x, out: out.argmax(dim=1, keepdim=True))

def classes_grow():
    return nn.Flatten()

def inf_weight():
    net = Net()
    with torch.no_grad():
        net.conv.weight[0, 0, 0, 0] = math.inf
    return net

def batch_of_one():
    def post(x, out):
        if x.shape[0] > 1:
            raise RuntimeError("this model takes one input at a time\\nsecond line")
        return out
    return Net(post)

def wide():
    return Net(channels=8192)

def broken():
    def post(x, out):
        raise ValueError("expects 3 channels")
    return Net(post)

def sized(input_shape):
    return Net()

def sized_broken(input_shape):
    raise ValueError("no such size")

def sized_base_only(input_shape):
    if input_shape != (1, 8, 8):
        raise ValueError(f"only 1x8x8, not {input_shape}")
    return Net()

def sized_nan_gradient(input_shape):
    return nan_gradient()

def sized_classes_grow(input_shape):
    return nn.Flatten()
'''


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "faulty_models.py"
    path.write_text(MODELS)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(capsys: pytest.CaptureFixture[str], models: Path, factory: str, out: Path, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["measure", f"{models}:{factory}", "--input-shape", "1,8,8", "--sizes", "1,2", "--inputs", "4",
               "--steps", "1", "--device", "cpu", "--out", str(out), *args])
    return rc, capsys.readouterr().err.strip()


def test_a_good_model_is_measured(models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control: the same file, a measurable model, exit 0 and a report."""
    rc, err = run(capsys, models, "good", tmp_path / "report")
    assert rc == 0, err
    assert (tmp_path / "report" / "report.html").is_file()


@pytest.mark.parametrize(("factory", "words"), [
    ("nan_logits", ["logits are NaN for 4 of 4 inputs at d = 64 (factor 1)", "check its weights"]),
    ("inf_logits", ["logits are infinite", "d = 64 (factor 1)"]),
    ("nan_gradient", ["input gradient of logit 0 is NaN at d = 64 (factor 1)", "check its weights"]),
    ("inf_gradient", ["input gradient of logit 0 is infinite at d = 64"]),
    ("zero_gradient", ["input gradient of logit 0 is zero for every input at d = 64 (factor 1)", "no slope"]),
    ("detached", ["logit 0 does not depend on its input at d = 64", "no slope"]),
    ("flat", ["returned shape (1,) for 1 input at d = 64", "(B, K) logits"]),
    ("extra_dim", ["returned shape (1, 3, 1)", "(B, K) logits"]),
    ("pair", ["returned a tuple", "logits only"]),
    ("labels", ["torch.int64", "floating-point"]),
    ("classes_grow", ["returns 64 logits at d = 64 but 256 at d = 256", "must not depend on the input size"]),
    ("inf_weight", ["parameter 'conv.weight'", "NaN or infinite"]),
    ("broken", ["does not accept inputs of shape 1x8x8: at factor 1 it raised ValueError: expects 3 channels"]),
    ("batch_of_one", ["the model failed at d = 64 (factor 1): RuntimeError: this model takes one input at a time"]),
])
def test_an_unmeasurable_model_is_one_line_and_writes_nothing(factory: str, words: list[str], models: Path,
                                                              tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    rc, err = run(capsys, models, factory, out)
    assert rc == 2
    assert err.startswith("advdim: error: ") and "\n" not in err and "Traceback" not in err
    for w in words:
        assert w in err
    assert not out.exists()


def test_a_refused_run_keeps_the_earlier_report(models: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A refusal neither writes into an existing report folder nor removes the plots of the run before."""
    out = tmp_path / "report"
    rc, err = run(capsys, models, "good", out)
    assert rc == 0, err
    before = _tree(out)
    assert any(name.startswith("plots") and name.endswith(".png") for name in before)
    rc, err = run(capsys, models, "nan_gradient", out)
    assert rc == 2 and "NaN" in err
    assert _tree(out) == before


def test_an_out_that_is_a_file_is_refused_before_the_factory_is_looked_up(models: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "taken.txt"
    target.write_text("keep\n")
    rc, err = run(capsys, models, "missing", target)  # the folder is checked first: no "has no attribute"
    assert rc == 2 and "is not a folder" in err and "\n" not in err
    assert target.read_text() == "keep\n"
    rc, err = run(capsys, models, "good", target / "sub")
    assert rc == 2 and "is a file, not a folder" in err


def test_inputs_too_large_for_memory_are_refused_before_the_model_runs(models: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """x100000 up-sampling of one 8 x 8 channel: 64 inputs of 6.4e11 values, petabytes in float64."""
    rc, err = run(capsys, models, "good", tmp_path / "report", "--sizes", "1,100000", "--inputs", "64")
    assert rc == 2 and "\n" not in err
    assert "up-sampling factor 100000 (d = 640000000000, 64 inputs) needs about" in err
    assert "(estimate)" in err and "use smaller --sizes or fewer --inputs" in err
    assert sys.modules["_advdim_user_faulty_models"].SHAPES == []
    assert not (tmp_path / "report").exists()


def test_activations_too_large_for_memory_are_refused_from_the_base_size(models: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """8192 channels per pixel: 256 inputs at x32 (256 x 256) hold terabytes of activations, though the
    inputs themselves fit.  The model runs once, on one input at the base size, and never at x32."""
    rc, err = run(capsys, models, "wide", tmp_path / "report", "--sizes", "1,32", "--inputs", "256")
    assert rc == 2 and "\n" not in err
    assert "up-sampling factor 32 (d = 65536, 256 inputs) needs about" in err and "(estimate)" in err
    assert sys.modules["_advdim_user_faulty_models"].SHAPES == [(1, 1, 8, 8)]
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("sizes", ["", "0", "-3", "1,1", "abc"])
def test_bad_sizes_are_one_line(sizes: str, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run(capsys, models, "good", tmp_path / "report", "--sizes", sizes)
    assert rc == 2 and err.startswith("advdim: error: --sizes") and "\n" not in err
    assert not (tmp_path / "report").exists()


def run_sized(capsys: pytest.CaptureFixture[str], models: Path, factory: str, out: Path, *args: str) -> tuple[int, str]:
    return run(capsys, models, factory, out, "--draws", "2", *args)


def test_a_sized_factory_is_measured_per_size(models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control of the per-size faults: a new model per size and draw, exit 0 and a report (the
    model is not traced: its forward records input shapes, which torch.fx cannot iterate)."""
    rc, err = run_sized(capsys, models, "sized", tmp_path / "report")
    assert rc in (0, 1), err  # no law: each row says whether it is consistent with d^(1/q - 1/2) (inconsistent fails)
    assert "setting: per-size draws" in err and "no prediction: the module is outside the theory's specs" in err
    assert sys.modules["_advdim_user_faulty_models"].SHAPES.count((4, 1, 16, 16)) >= 2  # one model per draw


@pytest.mark.parametrize(("factory", "words"), [
    ("sized_broken", ["the factory at input_shape=(1, 8, 8) raised ValueError: no such size", "faulty_models.py"]),
    ("sized_nan_gradient", ["input gradient of logit 0 is NaN at d = 64 (factor 1, draw 0)"]),
    ("sized_classes_grow", ["returns 64 logits at d = 64 but 256 at d = 256", "must not depend on the input size"]),
])
def test_an_unmeasurable_sized_factory_is_one_line_and_writes_nothing(factory: str, words: list[str], models: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    rc, err = run_sized(capsys, models, factory, out)
    assert rc == 2 and err.startswith("advdim: error: ") and "\n" not in err
    for w in words:
        assert w in err
    assert not out.exists()


def test_a_size_the_factory_refuses_is_dropped_with_a_note(models: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_sized(capsys, models, "sized_base_only", tmp_path / "report")
    assert rc == 0, err
    assert "do not accept the size factors [2]" in err and "only 1x8x8, not (1, 16, 16)" in err
    assert "no slope can be fitted" in err


def test_per_size_inputs_too_large_are_refused_before_any_model_runs(models: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_sized(capsys, models, "sized", tmp_path / "report", "--sizes", "1,100000")
    assert rc == 2 and "\n" not in err
    assert "size factor 100000 (d = 640000000000, 4 inputs) needs about" in err and "(estimate)" in err
    assert sys.modules["_advdim_user_faulty_models"].SHAPES == []
    assert not (tmp_path / "report").exists()
