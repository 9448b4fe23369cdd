"""Optional dependencies: one clear error naming the `pip install` extra.

The sampling kernels need only JAX and NumPy. Reading GGUF models needs the
`model` extra (`gguf`, `tokenizers`, `jinja2`); charts need the `plot` extra
(`matplotlib`).

Example:
  >>> require("json", "reading JSON").__name__   # present: the module itself
  'json'
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "missing", "require"]

# top-level module -> (pip extra, distribution name)
EXTRAS: dict[str, tuple[str, str]] = {
    "gguf": ("model", "gguf"),
    "tokenizers": ("model", "tokenizers"),
    "jinja2": ("model", "jinja2"),
    "matplotlib": ("plot", "matplotlib"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def _message(module: str, feature: str) -> str:
    extra, dist = EXTRAS[module]
    return (f"{feature} needs the optional package {dist!r}, which is not installed; "
            f"install it with: pip install 'nucleax[{extra}]'")


def require(module: str, feature: str) -> ModuleType:
    """Imports `module` (a key of `EXTRAS`, or any module) or raises `MissingExtraError`.

    Args:
      module: the module to import, e.g. `"gguf"` or `"matplotlib.pyplot"`.
      feature: what needs it, for the message (`"reading a GGUF model"`).
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        if top not in EXTRAS or (err.name is not None and err.name.split(".")[0] != top):
            raise
        raise MissingExtraError(_message(top, feature), name=top) from None


def missing(modules: tuple[str, ...], feature: str) -> str | None:
    """The message for the first of `modules` that is not installed, else None.

    Cheap (no import): lets the command line stop before a long run.
    """
    for module in modules:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return _message(module, feature)
    return None
