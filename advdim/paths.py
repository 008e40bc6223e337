"""Names of output files: every file a command writes lies in the folder the user named, under a
name derived from a canonical text that can neither leave that folder nor collide with another.

A target's text (``/abs/lab/fam.py:wide``, ``3x8x8 > res(conv(4), scale=0.5) > ...``) becomes a
*slug*: ASCII letters, digits, ``-`` and ``_``, at most :data:`MAX_SLUG` characters before a short
hash of the full text, appended whenever the slug differs from the text (so two different texts
never share a slug).  File names are built as ``slug + "_loglog.png"``, never with ``with_suffix``
(which cuts at a dot of the text).

**What may be overwritten.**  An :class:`OutputFolder` writes only the names it was given, and
replaces an existing file only when it is one of ours: a file that an earlier advdim run wrote in
that folder, as listed in the folder's :data:`MANIFEST`.  Any other existing file (a user's
``results.json`` in ``--out .``, a symbolic link, a folder) is refused before any work, in one line.

    >>> slug("dense"), slug("strided(kernel=5)")
    ('dense', 'strided_kernel_5-e7a475cd9e')
    >>> slug("/abs/lab/fam_ok.py:wide")
    'fam_ok_py_wide-712b5a66bf'
    >>> unique_stems(["dense", "dense", "gap"])
    ['dense', 'dense-2', 'gap']
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from advdim.errors import AdvdimError

__all__ = ["MANIFEST", "MAX_SLUG", "OutputFolder", "slug", "unique_stems"]

#: the longest readable part of a slug (the hash comes after it)
MAX_SLUG = 48
#: the file, in an output folder, that lists the files advdim wrote there (one name a line)
MANIFEST = ".advdim-files"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def slug(text: str, max_len: int = MAX_SLUG) -> str:
    """A file-name-safe stem for ``text``: the part after its last ``/`` with every run of other
    characters than ASCII letters, digits, ``-`` and ``_`` made one ``_``, cut at ``max_len``, then
    ``-`` and 10 hex digits of SHA-256 of the full text when anything was changed or cut."""
    tail = re.split(r"[/\\]", text)[-1]
    s = _UNSAFE.sub("_", tail).strip("_-")[:max_len].rstrip("_-") or "target"
    if s == text:
        return s
    return f"{s}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"


def unique_stems(texts: Sequence[str]) -> list[str]:
    """:func:`slug` of each text, made distinct within one run: a text that comes again, or a slug
    already taken, gets ``-2``, ``-3``, ... (the outputs of one run never share a name)."""
    taken: set[str] = set()
    out = []
    for text in texts:
        base = slug(text)
        stem, k = base, 1
        while stem in taken:
            k += 1
            stem = f"{base}-{k}"
        taken.add(stem)
        out.append(stem)
    return out


class OutputFolder:
    """The folder the user named for a command's files (``--out``).

    :meth:`check` before any work: the folder can be created or is a folder, and none of the names
    to write is an existing file that is not ours (see the module docstring).  :meth:`file` once the
    work is done: creates the folder, records the name in :data:`MANIFEST`, returns the path to
    write.  Nothing is written outside the folder: a name is a plain file name, never a path.
    """

    def __init__(self, path: str | os.PathLike[str], option: str = "--out") -> None:
        self.path = Path(path)
        self.option = option

    def __repr__(self) -> str:
        return f"OutputFolder({str(self.path)!r})"

    def _ours(self) -> set[str]:
        if (self.path / MANIFEST).is_symlink():
            raise AdvdimError(f"{str(self.path / MANIFEST)!r} is a symbolic link, not advdim's list of its files")
        try:
            return set((self.path / MANIFEST).read_text(encoding="utf-8").split("\n")) - {""}
        except (FileNotFoundError, NotADirectoryError):
            return set()
        except (OSError, UnicodeDecodeError) as e:
            raise AdvdimError(f"cannot read {str(self.path / MANIFEST)!r}: {e}") from None

    def _check_name(self, name: str) -> None:
        if not _NAME.match(name) or name in (MANIFEST, ".", ".."):
            raise ValueError(f"not a plain output file name: {name!r}")  # a bug of ours, not the user's input

    def check(self, names: Iterable[str]) -> None:
        """Refuse, before any work, a folder that cannot be created or that holds one of ``names``
        not written there by advdim; creates nothing."""
        from advdim.cli_args import check_out_folder

        check_out_folder(self.path, self.option)
        names = list(names)
        for name in names:
            self._check_name(name)
        if not self.path.is_dir():
            return
        ours = self._ours()
        for name in names:
            p = self.path / name
            if p.is_symlink() or (p.exists() and (name not in ours or not p.is_file())):
                raise AdvdimError(f"{self.option} {str(self.path)!r} already holds {name!r}, which advdim did not "
                                  "write there: give another folder, or move that file away")

    def file(self, name: str) -> Path:
        """The path to write ``name`` to: the folder created, the name checked (as in :meth:`check`)
        and listed in :data:`MANIFEST` first (an interrupted write stays ours)."""
        from advdim.cli_args import make_out_folder

        self._check_name(name)
        make_out_folder(self.path, self.option)
        self.check([name])
        ours = self._ours()
        if name not in ours:
            with open(self.path / MANIFEST, "a", encoding="utf-8") as f:
                f.write(name + "\n")
        return self.path / name
