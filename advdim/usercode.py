"""User code contained: whatever a user's family, factory or module does while advdim imports or
calls it (raises, calls ``sys.exit``, raises ``KeyboardInterrupt``) becomes one
:class:`~advdim.errors.SpecError` naming the user's code and the line in the user's file where it
happened (the innermost traceback frame inside that file), so the command prints one line and exits 2.

A real Ctrl-C (or a SIGTERM, which ``advdim`` turns into one) while user code runs is not the user's
code failing: it stays a ``KeyboardInterrupt`` (exit 130).

    >>> def family(size, channels):
    ...     raise SystemExit(3)
    >>> with user_code("the family lab.py:family"):  # doctest: +ELLIPSIS
    ...     family(8, 3)
    Traceback (most recent call last):
    ...
    advdim.errors.SpecError: the family lab.py:family called sys.exit(3) (<doctest ...>, line 2)

This module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sysconfig
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, ModuleType, TracebackType

from advdim.errors import AdvdimError, SpecError

__all__ = ["user_code", "source_of"]

_ADVDIM = str(Path(__file__).resolve().parent) + os.sep
_LIBRARY = tuple(p + os.sep for p in {sysconfig.get_paths().get(k, "") for k in ("stdlib", "platstdlib",
                                                                                     "purelib", "platlib")} if p)


def source_of(obj: object) -> str | None:
    """The file of a user's function, class or module (``None`` when it has none, e.g. a builtin)."""
    if isinstance(obj, (str, os.PathLike)):
        return os.fspath(obj)
    target = obj if isinstance(obj, ModuleType) or inspect.isroutine(obj) or inspect.isclass(obj) else type(obj)
    try:
        return inspect.getsourcefile(target) or inspect.getfile(target)
    except (TypeError, OSError):
        return None


def _shown(filename: str) -> str:
    """A file as a message shows it: relative to the current folder when inside it."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        return filename
    return filename if rel.startswith("..") else rel


def _where(tb: TracebackType | None, source: str | None) -> str:
    """``" (lab/fam.py, line 7)"``: the innermost frame inside ``source`` (a file, or a folder of
    files); without one, the innermost frame outside advdim, the standard library and the installed
    packages; ``""`` when there is none."""
    frames = traceback.extract_tb(tb)
    if source is not None:
        src = os.path.realpath(source)
        inside = [f for f in frames if os.path.realpath(f.filename) == src
                  or os.path.realpath(f.filename).startswith(src.rstrip(os.sep) + os.sep)]
    else:
        inside = []
    if not inside:
        inside = [f for f in frames if not f.filename.startswith("<frozen")
                  and not os.path.realpath(f.filename).startswith((_ADVDIM, *_LIBRARY))]
    if not inside:
        return ""
    f = inside[-1]
    return f" ({_shown(f.filename)}, line {f.lineno})"


class _Signals:
    """Notes whether SIGINT or SIGTERM arrived while user code ran, so that a real Ctrl-C can be told
    from a ``KeyboardInterrupt`` the user's code raised (only in the main thread, where handlers live)."""

    def __init__(self) -> None:
        self.arrived = False
        self._saved: list[tuple[int, object]] = []

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.arrived = True
        signal.default_int_handler(signum, frame)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is signal.default_int_handler:
                    self._saved.append((sig, signal.signal(sig, self._note)))
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved:
            signal.signal(sig, handler)  # type: ignore[arg-type]


@contextlib.contextmanager
def user_code(where: str, source: object = None) -> Iterator[None]:
    """Run the user's code named ``where`` (e.g. ``"the family lab/fam.py:wide(8, 3)"``); anything
    it raises becomes one :class:`SpecError`: ``"<where> raised ValueError: bad width (lab/fam.py,
    line 7)"``, ``"<where> called sys.exit(3) (...)"``.

    Args:
        where: the user's code in words, as the message starts.
        source: the user's file (a path, or the function, class or module it defines), or a folder
            of their files: the line shown is the innermost frame inside it.  Default: the innermost
            frame outside advdim, the standard library and the installed packages.
    Raises:
        SpecError: the user's code raised an exception, called ``sys.exit`` or raised
            ``KeyboardInterrupt`` itself.  An :class:`~advdim.errors.AdvdimError` it raised (e.g. a
            bad spec text given to :func:`advdim.arch.parse`) passes unchanged, and so does a real
            Ctrl-C or SIGTERM (``KeyboardInterrupt``).
    """
    path = source_of(source) if source is not None else None
    with _Signals() as signals:
        try:
            yield
        except AdvdimError:
            raise
        except SystemExit as e:
            code = "" if e.code is None else repr(e.code)
            raise SpecError(f"{where} called sys.exit({code}){_where(e.__traceback__, path)}") from None
        except KeyboardInterrupt as e:
            if signals.arrived:
                raise
            raise SpecError(f"{where} raised KeyboardInterrupt{_where(e.__traceback__, path)}") from None
        except Exception as e:  # noqa: BLE001 - the user's code: one line naming it
            text = " ".join(str(e).split())
            raise SpecError(f"{where} raised {type(e).__name__}{': ' + text if text else ''}"
                            f"{_where(e.__traceback__, path)}") from None

