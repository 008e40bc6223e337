"""The property-testing recipe of docs/property-testing.md runs as it stands (issue 11)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "property-testing.md"


def _recipe() -> dict[str, object]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "the recipe is one python block"
    namespace: dict[str, object] = {"__name__": "recipe"}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


def test_recipe_is_about_twenty_lines() -> None:
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 35, len(lines)


def test_recipe_properties_hold_and_the_planted_violations_fail() -> None:
    ns = _recipe()
    tests = {name: fn for name, fn in ns.items() if name.startswith("test_") and callable(fn)}
    assert set(tests) == {"test_law_on_random_dense_nets", "test_law_on_random_relu_specs",
                          "test_a_planted_violation_fails"}
    for fn in tests.values():
        fn()  # type: ignore[operator]
