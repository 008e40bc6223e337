"""Enums whose values are the words users type: strings are converted once, at the boundary.

    >>> class Colour(Choice):
    ...     RED = "red"
    ...     DARK_BLUE = "dark-blue"
    >>> Colour.parse(" Dark_Blue ")
    <Colour.DARK_BLUE: 'dark-blue'>
    >>> Colour.parse("green")
    Traceback (most recent call last):
    ...
    advdim.errors.AdvdimError: unknown colour 'green' (expected one of: red, dark-blue)
"""

from __future__ import annotations

import enum
from typing import TypeVar

from advdim.errors import AdvdimError

C = TypeVar("C", bound="Choice")


class Choice(enum.Enum):
    """Base of the user-facing enums; subclasses may override :meth:`noun`, :meth:`aliases`, :meth:`error`."""

    @classmethod
    def noun(cls) -> str:
        """What a value names, for error messages (default: the class name in lower case)."""
        return cls.__name__.lower()

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """Other spellings accepted by :meth:`parse`, mapped to values."""
        return {}

    @classmethod
    def error(cls) -> type[AdvdimError]:
        return AdvdimError

    @classmethod
    def parse(cls: type[C], text: str | C) -> C:
        """The member named by ``text`` (case, surrounding blanks and ``_`` vs ``-`` ignored)."""
        if isinstance(text, cls):
            return text
        key = str(text).strip().lower().replace("_", "-")
        try:
            return cls(cls.aliases().get(key, key))
        except ValueError:
            names = ", ".join(str(m.value) for m in cls)
            raise cls.error()(f"unknown {cls.noun()} {text!r} (expected one of: {names})") from None
