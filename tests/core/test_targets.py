"""Targets: every way of naming an architecture resolves to one canonical object (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from advdim.arch import (
    Family,
    TargetKind,
    family,
    parse,
    register_family,
    resolve_target,
    unregister_family,
)
from advdim.errors import SpecError

USER = '''
from advdim.arch import family, parse

def widening(size, channels):
    return parse(f"{channels}x{size}x{size} > conv({size // 2},k=3) > relu > globalavgpool > dense(10)")

def broken(size, channels):
    raise RuntimeError("lab code fails")

def wrong_shape(size, channels):
    return parse("1x4x4 > flatten > dense(10)")

member = family("strided", kernel=5)
not_callable = 42
'''


def test_built_in_name_is_random_and_member_is_fixed() -> None:
    t = resolve_target("strided")
    assert t.kind is TargetKind.FAMILY and t.random and t.text == "strided"
    with pytest.raises(SpecError, match="random topologies"):
        t.spec(16)
    m = resolve_target("strided( kernel = 5 ,padding=zeros, dilation=2)")
    assert m.kind is TargetKind.MEMBER and not m.random
    assert m.spec(16, 3) == family("strided", kernel=5, padding="zeros", dilation=2).spec(16, 3)
    assert resolve_target(m.text) == m  # the canonical text names the same target


def test_spec_text_keeps_its_layers_at_every_size() -> None:
    t = resolve_target("1x8x8 > conv(4,k=3,dil=2) > relu > flatten > dense(10)")
    assert t.kind is TargetKind.SPEC and t.channels == 1
    assert t.spec(32).layers == t.spec(8).layers and t.spec(32).d == 32 * 32
    assert resolve_target(t.text) == t
    with pytest.raises(SpecError, match="1 channel"):
        t.spec(16, 3)


def test_invalid_sizes_are_one_error_listing_the_valid_ones() -> None:
    t = resolve_target("3x8x8 > conv(4,k=3,s=2) > relu > flatten > dense(10)")
    with pytest.raises(SpecError) as err:
        t.check_sizes([8, 9, 16, 33])
    msg = str(err.value)
    assert "[9, 33]" in msg and "valid sizes in 1..256: 2, 4, 6, 8" in msg and "\n" not in msg
    t.check_sizes([8, 16, 32])


def test_user_family_from_a_file_and_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "labarch.py").write_text(USER)
    t = resolve_target(f"{tmp_path}/labarch.py:widening")
    assert t.kind is TargetKind.USER and t.text.endswith("labarch.py:widening")
    assert t.spec(8, 1).layers[0].out_channels == 4 and t.spec(32, 1).layers[0].out_channels == 16
    monkeypatch.syspath_prepend(str(tmp_path))
    u = resolve_target("labarch:widening")
    assert u.spec(16, 3) == t.spec(16, 3)
    fam = resolve_target("labarch:member")
    assert fam.kind is TargetKind.MEMBER and isinstance(fam.member, Family)


@pytest.mark.parametrize(
    ("name", "message"),
    [("broken", "raised RuntimeError: lab code fails"), ("wrong_shape", r"returned a spec with input \(1, 4, 4\)"),
     ("not_callable", "must be a callable"), ("absent", "has no attribute 'absent'")],
)
def test_user_family_faults_are_one_line(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "labarch2.py").write_text(USER)
    with pytest.raises(SpecError, match=message):
        resolve_target(f"{tmp_path}/labarch2.py:{name}").spec(8, 3)


def test_registered_family() -> None:
    register_family("tiny_mlp", lambda size, channels: parse(f"{channels}x{size}x{size} > flatten > dense(10)"))
    try:
        t = resolve_target("tiny_mlp")
        assert t.kind is TargetKind.USER and t.spec(4, 2).d == 32
        with pytest.raises(SpecError, match="built-in family"):
            register_family("dense", lambda s, c: None)
    finally:
        unregister_family("tiny_mlp")
    with pytest.raises(SpecError, match="neither a family"):
        resolve_target("tiny mlp")
