"""The strict grammar of spec and family texts (issue 24, item 2): repeated keys, non-ASCII digits and
letters, empty argument lists, numbers of absurd length and residual scales out of range are refused
with one line naming the problem; valid specs still read back to themselves."""

from __future__ import annotations

import json

import pytest

from advdim.arch import Conv, Flatten, ReLU, Residual, Spec, format_spec, parse, parse_family
from advdim.arch.layers import MAX_SCALE
from advdim.arch.text import MAX_FLOAT_CHARS, MAX_INT_DIGITS
from advdim.cli import main
from advdim.errors import SpecError

KELVIN = "\u212a"  # 'K': lower() reads it as 'k'
FULL_WIDTH_64 = "\uff16\uff14"  # int() reads it as 64


def wrap(layer: str) -> str:
    return f"3x8x8 > {layer} > flatten > dense(2)"


@pytest.mark.parametrize(("text", "words"), [
    # repeated keys: the last one used to win silently
    (wrap("batchnorm(mode=batch, mode=running)"), "layer 0 batchnorm: argument 'mode' given twice"),
    (wrap("res(conv(4),scale=0.5, scale=0.25)"), "layer 0 res: argument 'scale' given twice"),
    (wrap("conv(4,pad=circular,pad=zeros)"), "layer 0 conv: argument 'padding' given twice"),
    (wrap("conv(4,k=3,kernel=3)"), "argument 'kernel' given twice"),
    (wrap("conv(4,K=3,k=5)"), "argument 'kernel' given twice"),  # keys are case-blind
    (wrap("res(conv(4,s=1,s=1))"), "layer 0 res: branch layer 0 conv: argument 'stride' given twice"),
    # non-ASCII digits and letters that int(), float() and lower() accept
    (wrap(f"conv({FULL_WIDTH_64})"), "non-ASCII character '\uff16' (U+FF16)"),
    (wrap(f"conv(4,{KELVIN}=5)"), "non-ASCII character '\u212a' (U+212A)"),
    (wrap("conv(4,pad=circular,bias=tru\u0435)"), "(U+0435)"),  # a Cyrillic e
    ("\uff13x8x8 > flatten > dense(2)", "spec text: non-ASCII character"),
    (wrap("res(conv(4),scale=0\u0660.5)"), "(U+0660)"),  # an Arabic-Indic zero
    # empty argument lists: attn() was read as attn(1)
    (wrap("attn()"), "layer 0 attn: empty argument list '()': write 'attn' alone"),
    (wrap("relu( )"), "layer 0 relu: empty argument list"),
    (wrap("batchnorm()"), "layer 0 batchnorm: empty argument list"),
    (wrap("res(layernorm > attn())"), "branch layer 1 attn: empty argument list"),
    (wrap("conv()"), "layer 0 conv: missing argument(s) ['out_channels']"),
    (wrap("res()"), "layer 0 res: the branch needs at least one layer"),
    # numbers of absurd length (int() raised a ValueError traceback beyond 4300 digits)
    (wrap("conv(" + "9" * 5000 + ")"), f"out_channels has 5000 digits, more than the {MAX_INT_DIGITS}"),
    (wrap("conv(4,k=" + "0" * 20 + "3)"), "kernel has 21 digits"),
    ("3x" + "8" * 5000 + "x8 > flatten > dense(2)", "the input shape has 5000 digits"),
    (wrap("res(conv(4),scale=0." + "0" * 40 + "1)"), f"more than the {MAX_FLOAT_CHARS} a spec may hold"),
    (wrap("res(conv(4),scale=" + "1" * 5000 + ")"), "scale is a number of 5000 characters"),
    # scales that are not finite or whose square overflows the predictions
    (wrap("res(conv(4),scale=1e160)"), "layer 0 res: scale 1e+160 is out of range"),
    (wrap("res(conv(4),scale=1e100)"), f"|scale| must be at most {MAX_SCALE:g}"),
    (wrap("res(conv(4),scale=-1e100)"), "scale -1e+100 is out of range"),
    (wrap("res(conv(4),scale=1e400)"), "scale must be a finite number, got '1e400'"),
    (wrap("res(conv(4),scale=inf)"), "scale must be a finite number, got 'inf'"),
    (wrap("res(conv(4),scale=nan)"), "scale must be a finite number, got 'nan'"),
])
def test_malformed_spec_texts_are_refused_in_one_line(text: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(text)
    message = str(info.value)
    assert words in message, message
    assert "\n" not in message and len(message) < 400


@pytest.mark.parametrize(("text", "words"), [
    ("resnet(scale=0.5, scale=0.25)", "family resnet: parameter 'scale' given twice"),
    ("dense(widths=64,widths=32)", "parameter 'widths' given twice"),
    (f"dense(widths={FULL_WIDTH_64})", "family: non-ASCII character"),
    (f"strided(channels=8,{KELVIN}ernel=3)", "(U+212A)"),
    ("dense()", "family dense: empty argument list '()': write 'dense' alone"),
    ("resnet(blocks=" + "9" * 5000 + ")", f"blocks has 5000 digits, more than the {MAX_INT_DIGITS}"),
    ("dense(widths=64/" + "9" * 5000 + ")", "widths has 5000 digits"),
    ("resnet(scale=1e100)", "family resnet: scale 1e+100 is out of range"),
    ("resnet(scale=1e160)", "out of range"),
    ("resnet(scale=nan)", "scale must be a finite number, got 'nan'"),
    ("resnet(scale=inf)", "scale must be a finite number"),
    ("resnet(scale=1_0)", "scale must be a finite number"),
    ("dense(widths=6_4)", "widths must be integers separated by '/'"),
    ("strided(channels=+8.0)", "channels must be an integer"),
])
def test_malformed_family_texts_are_refused_in_one_line(text: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_family(text).spec(16)
    message = str(info.value)
    assert words in message, message
    assert "\n" not in message and len(message) < 400


def json_spec(*layers: object, shape: object = (3, 8, 8)) -> str:
    return json.dumps({"input_shape": shape, "layers": [*layers, {"kind": "flatten"},
                                                        {"kind": "dense", "out_features": 2}]})


@pytest.mark.parametrize(("text", "words"), [
    ('{"input_shape": [3, 8, 8], "layers": [{"kind": "batchnorm", "mode": "batch", "mode": "running"}, '
     '{"kind": "flatten"}, {"kind": "dense", "out_features": 2}]}', "key 'mode' given twice"),
    (json_spec({"kind": "conv", "out_channels": 10**13}), f"out_channels has more than the {MAX_INT_DIGITS} digits"),
    (json_spec({"kind": "conv", "out_channels": FULL_WIDTH_64}), "non-ASCII character"),
    (json_spec({"kind": "c\u043env", "out_channels": 4}), "non-ASCII character"),
    (json_spec({"kind": "relu"}, shape=[3, FULL_WIDTH_64, 8]), "non-ASCII character"),
    (json_spec({"kind": "relu"}, shape=[3, 8.5, 8]), "bad value 8.5 for a side"),
    (json_spec({"kind": "res", "branch": [{"kind": "relu"}], "scale": 1e100}), "scale 1e+100 is out of range"),
    (json_spec({"kind": "res", "branch": [{"kind": "relu"}], "scale": 10**400}), "scale has more than"),
    (json_spec({"kind": "res", "branch": [{"kind": "relu"}], "scale": float("nan")}), "scale must be a finite"),
    ('{"input_shape": [3, 8, 8], "layers": [{"kind": "conv", "out_channels": ' + "9" * 5000 + "}]}",
     "spec JSON does not parse"),
])
def test_malformed_spec_json_is_refused_in_one_line(text: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        Spec.from_json(text)
    message = str(info.value)
    assert words in message, message
    assert "\n" not in message and len(message) < 400


def test_records_with_absurd_scales_are_refused() -> None:
    for scale in (1e100, -1e160, float("inf"), MAX_SCALE * 1.001):
        with pytest.raises(SpecError, match="res: scale"):
            Spec((3, 4, 4), (Residual((Conv(3), ReLU()), scale), Flatten(), Conv(2)))


@pytest.mark.parametrize("text", [
    wrap("res(conv(4),scale=1e160)"), wrap("res(conv(4),scale=1e100)"), wrap(f"conv({FULL_WIDTH_64})"),
    wrap("attn()"), wrap("batchnorm(mode=batch,mode=running)"),
])
def test_theory_refuses_them_with_exit_2(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["theory", text]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advdim: error: ") and "\n" not in err


@pytest.mark.parametrize("text", [
    wrap("res(conv(4),scale=1000.0)"), wrap("res(conv(4),scale=-1000.0)"), wrap("res(conv(4),scale=5e-324)"),
    wrap("res(conv(4),scale=-1.5e-07)"), wrap("res(conv(4),scale=0.30000000000000004)"),
    "1x1x1 > flatten > dense(999999999) > dense(2)", wrap("conv(4,k=3,s=2,pad=reflect,bias=false)"),
    "1x1x1 > res(res(relu) > gelu,scale=-0.0) > flatten > dense(2)",
])
def test_valid_specs_at_the_edges_still_read_back(text: str) -> None:
    spec = parse(text)
    assert parse(format_spec(spec)) == spec and format_spec(parse(format_spec(spec))) == format_spec(spec)
    assert Spec.from_json(json.dumps(spec.to_json())) == spec


def test_long_and_short_keys_and_case_still_read() -> None:
    assert parse(wrap("CONV(4, Kernel=5, S=2, PAD=zeros)")).layers[0] == Conv(4, 5, 2, padding=Conv(4).padding.ZEROS)
    assert parse_family("resnet(scale=0.5,blocks=2)").get("scale") == 0.5
    assert parse_family("dense(widths=64/32)").get("widths") == (64, 32)
