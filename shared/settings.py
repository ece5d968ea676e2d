"""Settings for the service CLIs from a TOML file, environment variables and flags, in that order of
increasing precedence.

Why: flags alone put broker passwords in ``ps`` output and make a long command line the only record of
a deployment. Each CLI declares its settings once as :class:`Option` rows; every row is reachable as a
TOML key (``[section] key = value``), as an environment variable (``FEDMQ_SECTION_KEY``) and, unless it
is a secret, as a flag. Secrets (``secret=True``) are never accepted on the command line. Values are
checked against the row's type and every error names the field (``ConfigError``); unknown TOML keys are
errors too, so a typo never silently falls back to a default. Relative paths in a file are resolved
against the file's folder, so a provisioning bundle can be moved as a whole.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

#: Environment variable naming the config file when ``--config`` is not given.
CONFIG_ENV = "FEDMQ_CONFIG"
TYPES = ("str", "int", "float", "bool", "path", "hexkey")


@dataclass(frozen=True)
class Option:
    """One setting: ``key`` is its dotted TOML name (``rounds.min_clients``)."""

    key: str
    type: str = "str"
    default: Any = None
    help: str = ""
    #: Secrets (passwords) come from the file or the environment only, never from argv.
    secret: bool = False
    choices: tuple[str, ...] | None = None
    #: Flag name; default ``--<last part of key with '-'>``.
    flag: str | None = None

    @property
    def env(self) -> str:
        return "FEDMQ_" + self.key.upper().replace(".", "_")

    @property
    def dest(self) -> str:
        return self.key.replace(".", "__")

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.key.rsplit(".", 1)[-1].replace("_", "-")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def load_toml(path: Path) -> dict[str, Any]:
    """The flattened ``{dotted key: value}`` of a TOML file; ConfigError naming the file on any fault."""
    try:
        with open(path, "rb") as f:
            return _flatten(tomllib.load(f))
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc


def coerce(option: Option, value: Any, *, base: Path | None = None, source: str = "") -> Any:
    """``value`` (from TOML, an env string or a flag string) as ``option.type``; ConfigError naming it."""
    where = f" (from {source})" if source else ""

    def bad(reason: str) -> ConfigError:
        return ConfigError(option.key, f"{reason}{where}")

    if value is None:
        return None
    kind = option.type
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise bad(f"expected true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool):
            raise bad(f"expected an integer, got {value!r}")
        try:
            return int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise bad(f"expected an integer, got {value!r}") from None
    if kind == "float":
        if isinstance(value, bool):
            raise bad(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad(f"expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise bad(f"expected a string, got {type(value).__name__} {value!r}")
    if kind == "path":
        path = Path(value).expanduser()
        return path if path.is_absolute() or base is None else base / path
    if kind == "hexkey":
        try:
            key = bytes.fromhex(value.strip())
        except ValueError:
            raise bad("expected 64 hex characters") from None
        if len(key) != 32:
            raise bad(f"expected a 32-byte key (64 hex characters), got {len(key)} bytes")
        return key
    if option.choices is not None and value not in option.choices:
        raise bad(f"{value!r} is not one of {', '.join(option.choices)}")
    return value


def add_arguments(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """``--config`` plus one flag per non-secret option (defaults come later, from :func:`resolve`).

    Abbreviated flags are turned off: ``--password`` must not be taken for ``--password-file``.
    """
    parser.allow_abbrev = False
    parser.add_argument(
        "--config", type=Path, default=None, help=f"TOML settings file (or ${CONFIG_ENV})"
    )
    for option in options:
        if option.secret:
            continue
        kwargs: dict[str, Any] = {"dest": option.dest, "default": argparse.SUPPRESS}
        env_help = f" [{option.key}, ${option.env}]"
        if option.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        if option.choices:
            kwargs["choices"] = option.choices
        default = f" (default: {option.default})" if option.default not in (None, "") else ""
        parser.add_argument(option.flag_name, help=f"{option.help}{default}{env_help}", **kwargs)


def resolve(
    options: Sequence[Option],
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``{key: value}`` for every option: flag, else environment, else TOML file, else default."""
    environ = os.environ if environ is None else environ
    by_key = {o.key: o for o in options}
    path = getattr(args, "config", None) or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    file_values: dict[str, Any] = {}
    base = None
    if path is not None:
        file_values = load_toml(Path(path))
        base = Path(path).resolve().parent
        unknown = sorted(set(file_values) - set(by_key))
        if unknown:
            section = unknown[0].rpartition(".")[0]
            known = sorted(k for k in by_key if k.rpartition(".")[0] == section) or sorted(by_key)
            raise ConfigError(unknown[0], f"unknown setting in {path} (known here: {', '.join(known)})")
    values: dict[str, Any] = {}
    for option in options:
        if not option.secret and hasattr(args, option.dest):
            values[option.key] = coerce(option, getattr(args, option.dest), base=Path.cwd(), source="flag")
        elif option.env in environ:
            values[option.key] = coerce(option, environ[option.env], base=Path.cwd(), source=option.env)
        elif option.key in file_values:
            values[option.key] = coerce(option, file_values[option.key], base=base, source=str(path))
        else:
            values[option.key] = option.default
    values["config_dir"] = base
    return values


def read_secret(values: Mapping[str, Any], key: str) -> str | None:
    """A secret given inline (file or environment) or through ``<key>_file`` (first line of that file)."""
    inline = values.get(key)
    if inline:
        return str(inline)
    path = values.get(f"{key}_file")
    if path is None:
        return None
    try:
        return Path(path).read_text().splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        raise ConfigError(f"{key}_file", f"cannot read a secret from {path}: {exc}") from exc
