"""Credentials come from the environment or from secret files, never from the configuration
file itself, and never reach a log: a ``Secret`` prints as its source, not its value."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class Secret:
    __slots__ = ("_source", "_value")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self._source = source

    def reveal(self) -> str:
        """The value, for the one place that must send it (an auth header)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self._source})"

    __str__ = __repr__


def secret_from(spec: Mapping[str, Any], name: str, *, owner: str) -> Secret:
    """The credential ``name`` of a configuration table: ``<name>_env`` names an environment
    variable, ``<name>_file`` a file (its content, stripped). Inline values are refused."""
    if name in spec:
        raise ValueError(
            f"{owner}: {name} must not be written in the configuration; "
            f"use {name}_env (an environment variable) or {name}_file (a secret file)"
        )
    if f"{name}_file" in spec:
        path = Path(str(spec[f"{name}_file"]))
        try:
            return Secret(path.read_text().strip(), f"file {path}")
        except OSError as e:
            raise ValueError(f"{owner}: cannot read {name}_file {path}: {e.strerror}") from None
    if f"{name}_env" in spec:
        variable = str(spec[f"{name}_env"])
        value = os.environ.get(variable)
        if not value:
            raise ValueError(f"{owner}: environment variable {variable} ({name}) is not set")
        return Secret(value, f"${variable}")
    raise ValueError(f"{owner}: {name}_env or {name}_file is required")
