"""One small registry for named variants: students, losses, calibration methods.

A variant is added with a decorator; an unknown name is an error listing the close matches.

Example:
    >>> STUDENTS = Registry("student")
    >>> @STUDENTS.register()
    ... def tiny(num_classes: int = 10, in_chans: int = 3):
    ...     return ("tiny", num_classes, in_chans)
    >>> STUDENTS.get("tiny")(num_classes=5)
    ('tiny', 5, 3)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from onnxkd.errors import OnnxkdError

T = TypeVar("T")  # a factory function, a class or a descriptor (data-source kinds)


class UnknownNameError(OnnxkdError):
    """A registry was asked for a name it does not hold."""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def add(fn: T) -> T:
            key = name or fn.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = fn
            return fn

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, self.names(), n=4, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
