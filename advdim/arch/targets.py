"""Targets: one way to name an architecture, for every command and the Python API.

A *target* is what a user names; every layer (theory, simulation, training, store keys, JSON,
reports) takes a :class:`Target` and none of them knows which form it came from:

- a built-in family name (``strided``): **random topologies** of the family (the paper's setting);
- a fixed family member (``strided(kernel=5,padding=zeros,dilation=2)``): measured exactly as
  given, only weights and inputs are drawn;
- spec text (``3x16x16 > conv(8,k=3,dil=2) > relu > flatten > dense(10)``): the same layers at
  every input side ``s`` (:meth:`Spec.with_input`, input ``C x s x s``);
- a user family from Python: ``path/to/file.py:NAME`` or ``module:NAME``, where ``NAME`` is a
  callable ``(size, channels) -> Spec`` or a :class:`Family`, or a name registered with
  :func:`register_family`: a lab keeps its architectures in its own repository.

Every target has one canonical text (``Target.text``), used as its name in store keys, JSON and
reports; for the fixed forms, :meth:`Target.spec` gives the concrete network at a size.

    >>> t = resolve_target("3x8x8 > conv(4,k=3) > relu > flatten > dense(10)")
    >>> t.kind.value, t.spec(16).input_shape, t.random
    ('spec', (3, 16, 16), False)
    >>> resolve_target("strided").random, resolve_target("strided(kernel=5)").kind.value
    (True, 'member')
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from advdim.arch.families import FAMILIES, Family, parse_family
from advdim.arch.grammar import parse
from advdim.arch.layers import Spec
from advdim.errors import SpecError
from advdim.usercode import user_code

#: sizes searched when an error lists the valid ones
SIZE_SEARCH = range(1, 257)


class TargetKind(enum.Enum):
    FAMILY = "family"  # random topologies of a built-in family
    MEMBER = "member"  # one fixed member of a family
    SPEC = "spec"  # the same layers at every input size
    USER = "user"  # a user family from Python


#: user families registered by name (``register_family``)
_REGISTERED: dict[str, Callable[[int, int], Any] | Family] = {}


def register_family(name: str, builder: Callable[[int, int], Any] | Family) -> None:
    """Make ``name`` a target everywhere (``--family NAME``, ``predict``, ``study``, ...).

    Args:
        name: a new name (lower-case letters, digits, ``_``; not a built-in family).
        builder: ``(size, channels) -> Spec`` (or a :class:`Family`).

    Sweep workers in other processes see the network through the cell's spec, never by name, so
    registering in the main process is enough.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name or ""):
        raise SpecError(f"a family name is lower-case letters, digits and '_', got {name!r}")
    if name in FAMILIES:
        raise SpecError(f"{name!r} is a built-in family; choose another name")
    if not (isinstance(builder, Family) or callable(builder)):
        raise SpecError(f"register_family({name!r}, ...) needs a callable (size, channels) -> Spec or a Family")
    _REGISTERED[name] = builder


def unregister_family(name: str) -> None:
    _REGISTERED.pop(name, None)


@dataclass(frozen=True)
class Target:
    """A named architecture (see the module docstring); build one with :func:`resolve_target`.

    Attributes:
        kind: which form it came from.
        text: the canonical text (store keys, JSON, reports).
        member: the family member (``MEMBER``) or the family with its defaults (``FAMILY``).
        base: the spec of a ``SPEC`` target (its own input size).
        builder: ``(size, channels) -> Spec | Family`` of a ``USER`` target.
    """

    kind: TargetKind
    text: str
    member: Family | None = None
    base: Spec | None = None
    builder: Callable[[int, int], Any] | None = field(default=None, compare=False, repr=False)

    @property
    def random(self) -> bool:
        """True for a built-in family name: each study draws random topologies of it."""
        return self.kind is TargetKind.FAMILY

    @property
    def name(self) -> str:
        return self.text

    @property
    def channels(self) -> int | None:
        """The input channels the target fixes (a spec's ``C``), or None when any will do."""
        return self.base.input_shape[0] if self.base is not None else None

    def to_text(self) -> str:
        return self.text

    def to_json(self) -> dict[str, Any]:
        return {"target": self.text, "kind": self.kind.value}

    def spec(self, size: int, channels: int | None = None) -> Spec:
        """The concrete network at input ``(channels, size, size)``.

        A ``FAMILY`` target has no single network: draw members (``advdim.simulate.topologies``)
        or name a member.  A ``SPEC`` target keeps its own channels.
        """
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise SpecError(f"{self.text}: input size must be a positive integer, got {size!r}")
        if self.kind is TargetKind.SPEC:
            assert self.base is not None
            c = self.base.input_shape[0]
            if channels is not None and channels != c:
                raise SpecError(f"the spec's input has {c} channel(s), not {channels}")
            return self.base.with_input((c, size, size))
        ch = 3 if channels is None else channels
        if self.kind is TargetKind.USER:
            assert self.builder is not None
            return _user_spec(self.text, self.builder, size, ch)
        assert self.member is not None
        if self.kind is TargetKind.FAMILY:
            raise SpecError(f"the family {self.text!r} draws random topologies; name a member, e.g. "
                            f"{self.member.to_text()!r}, for one network")
        return self.member.spec(size, ch)

    def valid_sizes(self, candidates: Iterable[int] = SIZE_SEARCH, channels: int | None = None) -> list[int]:
        out = []
        for s in candidates:
            try:
                self.spec(int(s), channels)
            except SpecError:
                continue
            out.append(int(s))
        return out

    def check_sizes(self, sizes: Sequence[int], channels: int | None = None) -> None:
        """One :class:`SpecError` naming every size at which the target is invalid, and the valid ones."""
        if self.random:
            return  # each random topology is drawn valid at every size
        bad: dict[int, str] = {}
        for s in sizes:
            try:
                self.spec(int(s), channels)
            except SpecError as err:
                bad[int(s)] = str(err)
        if bad:
            valid = self.valid_sizes(SIZE_SEARCH, channels)
            shown = ", ".join(map(str, valid[:24])) + (" ..." if len(valid) > 24 else "")
            first = next(iter(bad))
            raise SpecError(f"{self.text} is not valid at size(s) {sorted(bad)} ({first}: {bad[first]}); "
                            f"valid sizes in 1..{SIZE_SEARCH[-1]}: {shown or 'none'}")


def _user_spec(text: str, builder: Callable[[int, int], Any], size: int, channels: int) -> Spec:
    with user_code(f"{text}({size}, {channels})", builder):
        out = builder(size, channels)
    if isinstance(out, Family):
        out = out.spec(size, channels)
    elif isinstance(out, str):
        out = parse(out) if ">" in out else parse_family(out).spec(size, channels)
    if not isinstance(out, Spec):
        raise SpecError(f"{text}({size}, {channels}) must return a Spec, spec text or Family, "
                        f"got {type(out).__name__}")
    if out.input_shape != (channels, size, size):
        raise SpecError(f"{text}({size}, {channels}) returned a spec with input {out.input_shape}, "
                        f"not {(channels, size, size)}")
    return out


_SOURCE_RE = re.compile(r"^(?P<module>[^:]+):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


def load_object(text: str) -> Any:
    """Import ``MODULE:NAME`` where ``MODULE`` is a dotted module name or a path to a ``.py`` file.
    The one loader of user code: ``--family file.py:NAME`` and ``advdim measure MODULE:FACTORY`` both
    use it.

    Installed packages are never shadowed by the user's folders: a file is imported by its path, its
    folder *appended* to ``sys.path`` (its sibling modules import, a ``sympy.py`` beside it does not
    replace SymPy); for a dotted name, the current folder is appended too (as with ``python -m``, but
    last).  No ``__pycache__`` is written beside the user's files.  Whatever the user's module does
    while imported (raises, ``sys.exit``) is one :class:`SpecError` naming its file and line
    (:func:`advdim.usercode.user_code`).
    """
    m = _SOURCE_RE.match(text.strip())
    if m is None:
        raise SpecError(f"a Python object is named MODULE:NAME or path/to/file.py:NAME, got {text!r}")
    module, name = m.group("module"), m.group("name")
    path = Path(module)
    if module.endswith(".py") or path.is_file():
        if not path.is_file():
            raise SpecError(f"no such Python file: {module!r}")
        mod = _import_file(module, path)
    else:
        _append_path(str(Path.cwd()), also="")
        with _no_bytecode(), user_code(f"importing {module!r}"):  # find_spec imports the parent packages
            try:
                found = importlib.util.find_spec(module)
            except (ImportError, ValueError) as e:
                raise SpecError(f"cannot import module {module!r}: {e}") from None
        if found is None:
            raise SpecError(f"cannot import module {module!r}: no module named {module!r}")
        origin = found.origin if found.has_location else None
        if origin is not None and found.submodule_search_locations is not None:  # a package: its folder
            origin = os.path.dirname(origin)
        with _no_bytecode(), user_code(f"importing {module!r}", origin):
            mod = importlib.import_module(module)
    with user_code(f"{module}:{name}", mod):
        if not hasattr(mod, name):
            raise SpecError(f"module {module!r} has no attribute {name!r}")
        return getattr(mod, name)


@contextlib.contextmanager
def _no_bytecode() -> Iterator[None]:
    """No ``__pycache__`` written beside the user's files while they are imported (nothing written
    outside what the user named)."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def _append_path(folder: str, also: str | None = None) -> None:
    """Make ``folder`` importable after everything already on ``sys.path`` (never before it)."""
    if folder not in sys.path and (also is None or also not in sys.path):
        sys.path.append(folder)


def _import_file(module: str, path: Path) -> ModuleType:
    """Import the ``.py`` file ``path`` as the module ``_advdim_user_<its name>``."""
    real = os.path.realpath(path)
    mod_name = f"_advdim_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"cannot import {module!r}")
    mod = importlib.util.module_from_spec(spec)
    _append_path(os.path.dirname(real))
    sys.modules[mod_name] = mod
    try:
        with _no_bytecode(), user_code(f"importing {module!r}", real):
            spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return mod


def resolve_target(obj: str | Target | Family | Spec | Callable[[int, int], Any]) -> Target:
    """Turn whatever names an architecture into a :class:`Target` (see the module docstring)."""
    if isinstance(obj, Target):
        return obj
    if isinstance(obj, Family):
        return Target(TargetKind.MEMBER, obj.to_text(), member=obj)
    if isinstance(obj, Spec):
        return Target(TargetKind.SPEC, obj.to_text(), base=obj)
    if not isinstance(obj, str):
        if callable(obj):
            qual = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"
            return Target(TargetKind.USER, qual, builder=obj)
        raise SpecError(f"cannot name an architecture with a {type(obj).__name__}")
    text = obj.strip()
    if ">" in text:
        spec = parse(text)
        return Target(TargetKind.SPEC, spec.to_text(), base=spec)
    if text in _REGISTERED:
        return _user_target(text, _REGISTERED[text])
    if _SOURCE_RE.match(text):
        return _user_target(os.path.normpath(text.rpartition(":")[0]) + ":" + text.rpartition(":")[2],
                            load_object(text))
    fam = parse_family(text)  # its error names both forms
    if "(" in text:
        return Target(TargetKind.MEMBER, fam.to_text(), member=fam)
    return Target(TargetKind.FAMILY, fam.name, member=fam)


def _user_target(text: str, obj: Any) -> Target:
    if isinstance(obj, Family):
        return Target(TargetKind.MEMBER, obj.to_text(), member=obj)
    if isinstance(obj, Target):
        return obj
    if isinstance(obj, Spec):
        return Target(TargetKind.SPEC, obj.to_text(), base=obj)
    if not callable(obj):
        raise SpecError(f"{text} must be a callable (size, channels) -> Spec, a Family or a Spec, "
                        f"got {type(obj).__name__}")
    return Target(TargetKind.USER, text, builder=obj)
