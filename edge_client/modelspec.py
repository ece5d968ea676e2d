"""Load a model factory named ``module.path:factory`` or ``path/to/file.py:factory``.

Why: ``--model pkg:factory`` used to need ``PYTHONPATH=.``; an operator's model lives in their own
folder, not in an installed package. Module names are looked up with the current folder and the
config file's folder on the path; a file path is loaded directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import ConfigError


def load_factory(spec: str, *, base: Path | None = None, field: str = "training.model") -> Callable[[], Any]:
    """The callable named by ``spec``; ConfigError naming ``field`` if it cannot be found."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(field, f"{spec!r} is not module:factory or file.py:factory")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_absolute() and base is not None and (base / path).exists():
                path = base / path
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            if loader_spec is None or loader_spec.loader is None or not path.exists():
                raise ConfigError(field, f"{path} does not exist")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            for folder in (str(Path.cwd()), str(base) if base is not None else None):
                if folder and folder not in sys.path:
                    sys.path.insert(0, folder)
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(field, f"cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(field, f"{target!r} has no callable {attr!r}")
    return factory
