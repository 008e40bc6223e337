"""Architecture handling in time linear in the nesting depth, and the bounds that refuse absurd specs
(issue 24, item 1): every shape is worked out once per level, and nesting, layer, parameter and
size bounds are one-line refusals made before any recursion or any layer list is built."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from advdim.arch import Conv, Dense, Flatten, ReLU, Residual, Spec, family, format_spec, parse, parse_family
from advdim.arch.layers import MAX_LAYERS, MAX_NESTING, MAX_PARAMS, MAX_UNITS, Layer
from advdim.cli import main
from advdim.errors import SpecError


def nested_text(depth: int) -> str:
    """``depth`` residual blocks, each the whole branch of the one around it, on ``conv(4) > relu``."""
    return "3x8x8 > " + "res(" * depth + "conv(4) > relu" + ",scale=0.5)" * depth + " > flatten > dense(2)"


def nested_records(depth: int) -> Spec:
    block: Layer = Residual((Conv(4), ReLU()), 0.5)
    for _ in range(depth - 1):
        block = Residual((block,), 0.5)
    return Spec((3, 8, 8), (block, Flatten(), Dense(2)))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts the calls of ``Conv.out_shape`` (the innermost layer) and ``Residual.out_shape``."""
    counter: Counter[str] = Counter()
    for cls in (Conv, Residual):
        original = cls.out_shape

        def counted(self: Layer, shape: tuple[int, ...], _original: Callable = original,
                    _name: str = cls.__name__) -> tuple[int, ...]:
            counter[_name] += 1
            return _original(self, shape)

        monkeypatch.setattr(cls, "out_shape", counted)
    yield counter


OPERATIONS: dict[str, Callable[[Spec, str], object]] = {
    "parse": lambda spec, text: parse(text),
    "shapes": lambda spec, text: spec.shapes(),
    "n_params": lambda spec, text: spec.n_params(),
    "table": lambda spec, text: spec.table(),
    "text round trip": lambda spec, text: parse(format_spec(spec)),
    "json round trip": lambda spec, text: Spec.from_json(json.dumps(spec.to_json())),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_each_level_works_out_its_branch_shapes_once(operation: str, calls: Counter[str]) -> None:
    """A regression to two shape walks per level would call the innermost conv 2**depth times."""
    inner = {}
    for depth in (1, 2, 12):
        text = nested_text(depth)
        spec = parse(text)
        calls.clear()
        OPERATIONS[operation](spec, text)
        inner[depth] = calls["Conv"]
        assert calls["Residual"] <= 2 * depth, (operation, depth, calls)
    assert inner[12] == inner[2] == inner[1] <= 2, (operation, inner)


def test_shapes_call_each_block_once(calls: Counter[str]) -> None:
    spec = parse(nested_text(12))
    calls.clear()
    assert spec.shapes()[1] == (4, 8, 8)
    assert calls == {"Residual": 12, "Conv": 1}


def test_the_deepest_nesting_allowed_resolves_and_round_trips() -> None:
    spec = parse(nested_text(MAX_NESTING))
    assert spec == nested_records(MAX_NESTING)
    assert parse(spec.to_text()) == spec
    assert Spec.from_json(json.dumps(spec.to_json())) == spec
    # the branch conv 3->4 (3*9*4 + 4), a 1x1 projection 3->4 at each level (each maps the block's
    # input onto its branch's output), the dense head
    assert spec.n_params() == 112 + 12 * MAX_NESTING + (4 * 64 * 2 + 2)
    assert spec.table()[0]["params"] == 112 + 12 * MAX_NESTING


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 2000, 100_000])
def test_deeper_nesting_is_refused_in_one_line_before_any_recursion(depth: int) -> None:
    text = nested_text(depth)
    with pytest.raises(SpecError, match=f"nesting deeper than {MAX_NESTING}") as info:
        parse(text)
    assert "\n" not in str(info.value)
    data = {"input_shape": [3, 8, 8], "layers": [{"kind": "conv", "out_channels": 4}]}
    for _ in range(depth):
        data["layers"] = [{"kind": "res", "branch": data["layers"]}]
    data["layers"] += [{"kind": "flatten"}, {"kind": "dense", "out_features": 2}]
    with pytest.raises(SpecError, match=f"nesting deeper than {MAX_NESTING}"):
        Spec.from_json(data)
    branch = '{"kind": "res", "branch": [' * depth + '{"kind": "conv", "out_channels": 4}' + "]}" * depth
    with pytest.raises(SpecError, match=f"nesting deeper than {MAX_NESTING}"):
        Spec.from_json('{"input_shape": [3, 8, 8], "layers": [' + branch + ', {"kind": "flatten"}, '
                       '{"kind": "dense", "out_features": 2}]}')


def test_records_nested_too_deep_are_refused() -> None:
    with pytest.raises(SpecError, match=f"nesting deeper than {MAX_NESTING}"):
        nested_records(MAX_NESTING + 1)
    with pytest.raises(SpecError, match=f"nesting deeper than {MAX_NESTING}"):
        nested_records(5000)


def test_arch_show_refuses_deep_nesting_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "show", nested_text(2000)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().count("\n") == 0 and f"nesting deeper than {MAX_NESTING}" in captured.err
    assert main(["arch", "show", nested_text(50), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == nested_records(50).n_params()


@pytest.mark.parametrize("blocks", [1000, 100_000_000, 10**11])
def test_a_resnet_of_absurdly_many_blocks_is_refused_before_it_is_built(blocks: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow on the way
        with pytest.raises(SpecError, match=f"family resnet: the spec has more than {MAX_LAYERS} layers"):
            family("resnet", blocks=blocks).spec(16)
        with pytest.raises(SpecError, match=f"more than {MAX_LAYERS} layers"):
            parse_family(f"resnet(blocks={blocks})").spec(16)


def test_the_layer_bound_counts_branch_layers_and_admits_the_largest_member() -> None:
    # resnet at s = 16 (two halvings): 4 + 4 * 2 * (blocks + 1) layers
    largest = (MAX_LAYERS - 4) // 8 - 1
    assert len(family("resnet", blocks=largest).spec(16).layers) == 4 + 2 * (largest + 1)
    with pytest.raises(SpecError, match="more than"):
        family("resnet", blocks=largest + 1).spec(16)
    with pytest.raises(SpecError, match="more than"):
        family("vit", depth=MAX_LAYERS).spec(16)
    with pytest.raises(SpecError, match="more than"):
        family("dense", widths=(4,) * MAX_LAYERS).spec(4)
    branch = (Conv(4), ReLU(), Conv(4))
    with pytest.raises(SpecError, match=f"more than {MAX_LAYERS} layers"):  # 251 blocks of 4 layers
        Spec((3, 8, 8), (*[Residual(branch)] * 251, Flatten(), Dense(2)))
    with pytest.raises(SpecError, match=f"more than {MAX_LAYERS} layers"):
        parse("3x8x8 > " + " > ".join(["relu"] * MAX_LAYERS) + " > flatten > dense(2)")


@pytest.mark.parametrize(("text", "words"), [
    ("3x8x8 > flatten > dense(200000) > dense(200000) > dense(2)", f"more than the maximum of {MAX_PARAMS:.0e}"),
    ("3x8x8 > conv(1000000000) > flatten > dense(2)", f"more than the maximum of {MAX_UNITS:.0e}"),
    ("3x8x8 > res(conv(1000000000)) > flatten > dense(2)", "branch layer 0 conv(1000000000): its output"),
    ("3x100000x100000 > flatten > dense(2)", "input shape (3, 100000, 100000) holds 3e+10 numbers"),
])
def test_absurd_parameter_and_unit_counts_are_refused(text: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(text)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_flatten_counts_exactly_beyond_int64() -> None:
    # numpy's product would wrap around; the bound must see the true size
    assert Flatten().out_shape((2**31, 2**31, 4)) == (2**64,)
