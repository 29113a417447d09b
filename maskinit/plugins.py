"""User plugins: modules imported before building, whose decorators register initializers and norms."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import MaskinitError

_loaded: set[str] = set()


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module once (a dotted name importable from the current directory, or a .py path)."""
    for name in modules:
        if not name or name in _loaded:
            continue
        try:
            if name.endswith(".py"):
                path = Path(name)
                if not path.is_file():
                    raise MaskinitError(f"plugin file {name} not found")
                sys.path.insert(0, str(path.resolve().parent))
                importlib.import_module(path.stem)
            else:
                if "" not in sys.path and str(Path.cwd()) not in sys.path:
                    sys.path.insert(0, str(Path.cwd()))
                importlib.import_module(name)
        except MaskinitError:
            raise
        except ModuleNotFoundError as error:
            raise MaskinitError(f"plugin {name} cannot be imported: {error}") from error
        except Exception as error:  # a plugin's own bug: name it in one line
            raise MaskinitError(f"plugin {name} failed on import: {type(error).__name__}: {error}") from error
        _loaded.add(name)
