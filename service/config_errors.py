"""Configuration errors at start-up: a bad models file, a setting naming what does not exist, pickled weights
without `trust_pickle`. A process that meets one says so in one line (no traceback: nothing in the code is
wrong) and exits with `EX_CONFIG`, which `fresco up` (service/cli/up.py) does not restart: starting it again
would fail the same way.
"""

from __future__ import annotations

import tomllib

import yaml

EX_CONFIG = 78  # sysexits.h: "something was found in an unconfigured or misconfigured state"

# What a start-up step (the models file read, the models loaded) raises for a bad configuration: pydantic's
# ValidationError and the catalogue's and loaders' checks are ValueErrors; a file named that is not there.
CONFIG_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, yaml.YAMLError, tomllib.TOMLDecodeError)


class ConfigError(Exception):
    """A configuration error met at start-up, with what it is in one line (`str()`)."""

    @classmethod
    def of(cls, exc: BaseException) -> "ConfigError":
        return cls(one_line(exc))


def one_line(exc: BaseException) -> str:
    """An error's message on one line: each of a pydantic ValidationError's errors as `where: what`, joined."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            parts = []
            for e in errors():
                msg = str(e.get("msg", "")).removeprefix("Value error, ")
                where = ".".join(str(p) for p in e.get("loc", ()))
                parts.append(f"{where}: {msg}" if where else msg)
            if parts:
                return " ".join("; ".join(parts).split())
        except (TypeError, AttributeError):
            pass
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file: {exc.filename}"
    return " ".join(str(exc).split()) or type(exc).__name__
