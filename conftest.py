"""Repository-root pytest configuration: the docstring examples of ``telesketch/`` run as doctests
(``--doctest-modules`` in pyproject.toml), except in modules whose optional support does not import
here, which are skipped rather than reported as collection errors."""
import importlib


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - ImportError, or a CUDA toolkit that fails to initialise
        return False
    return True


#: Package folders whose modules import an optional dependency at import time, and that dependency.
_OPTIONAL = {"telesketch/gpu": "numba.cuda"}

collect_ignore = [path for path, module in _OPTIONAL.items() if not _imports(module)]
