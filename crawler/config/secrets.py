"""Secrets: where a secret lives (an env var or a file) and the masked value read at run time."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crawler.errors import MissingSecretError

# --------------------------------------------------------------------------------------------------
# Secrets


class Secret:
    """A secret value read at run time. ``repr``/``str`` are masked; :meth:`reveal` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call only where it is put on the wire."""
        return self._value

    def get_secret_value(self) -> str:
        """Same as :meth:`reveal`, spelled like pydantic's ``SecretStr``."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        # Pickling would write the value to wherever the pickle goes (multiprocessing, caches).
        raise TypeError("Secret objects cannot be pickled")


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a secret lives (an env var or a file), never the secret itself.

    ``key_path``, ``config_file`` and ``line`` locate the setting in the tenant file, for errors.
    """

    name: str
    env: str | None
    file: str | None
    key_path: str
    config_file: str | None = None
    line: int | None = None

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env is not None else f"file {self.file}"

    def resolve(self, environ: Mapping[str, str] | None = None) -> Secret:
        """Read the secret now (trailing newline stripped); :class:`MissingSecretError` if unavailable."""
        if self.env is not None:
            value = (os.environ if environ is None else environ).get(self.env)
            if value is None:
                raise self._error(
                    f"environment variable {self.env} is not set",
                    f"export {self.env} before running, or use {self.name}_file",
                )
        else:
            assert self.file is not None
            try:
                raw = Path(self.file).read_bytes()
            except OSError as exc:
                raise self._error(
                    f"cannot read file {self.file}: {exc.strerror or type(exc).__name__}",
                    "check the path and that the crawler's user may read it",
                ) from None
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                # The exception text would quote bytes of the secret, so it is not chained.
                raise self._error(f"file {self.file} is not UTF-8 text", "store the secret as text") from None
        value = value.rstrip("\r\n")
        if not value.strip():
            raise self._error(f"{self.describe()} is empty", f"put the {self.name} in {self.describe()}")
        return Secret(value)

    def _error(self, problem: str, fix: str) -> MissingSecretError:
        return MissingSecretError(
            problem, file=self.config_file, key_path=self.key_path, line=self.line, fix=fix
        )
