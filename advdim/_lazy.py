"""Lazy public surfaces: a package names its exports and the module of each, and imports that
module on first use (PEP 562), so that ``import advdim`` or ``advdim --help`` costs no torch,
SymPy or SciPy import.

    >>> import types
    >>> pkg = types.ModuleType("demo")
    >>> getattr_ = lazy_getattr("demo", {"sqrt": "math"}, vars(pkg))
    >>> getattr_("sqrt")(9.0)
    3.0
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) on first access to
    ``name`` and caches the object in the package's ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = importlib.import_module(module)
        value = value if module.rsplit(".", 1)[-1] == name else getattr(value, name)
        namespace[name] = value
        return value

    return __getattr__
