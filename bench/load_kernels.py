"""Import the repository's kernels/ folder as `qrecipe.kernels`, installed or not.

The GPU machine's image has torch and triton but not qrecipe (nor Hydra, MLflow...), and
kernels/ imports nothing else from qrecipe: so a bare `qrecipe` package is made and kernels/
loaded under it from its path. Relative imports inside kernels/ and the `qrecipe::` custom op
names then stay exactly as they are when installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_kernels() -> types.ModuleType:
    try:
        return importlib.import_module("qrecipe.kernels")
    except ImportError:
        pass
    root = sys.modules.setdefault("qrecipe", types.ModuleType("qrecipe"))
    root.__path__ = []  # a package with no folder of its own
    spec = importlib.util.spec_from_file_location("qrecipe.kernels", REPO / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "kernels")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["qrecipe.kernels"] = module
    spec.loader.exec_module(module)
    return module
