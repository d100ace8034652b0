"""OmegaConf resolvers used by conf/config.yaml."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def source_root() -> Path | None:
    """The checkout qrecipe runs from (editable install), or None for an installed copy."""
    import qrecipe.conf

    root = Path(qrecipe.conf.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def shared_dir() -> str:
    env = os.environ.get("QRECIPE_SHARED")
    if env:
        return str(Path(env).expanduser().resolve())
    root = source_root() or Path.cwd()
    return str((root / ".." / "shared").resolve())


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("qr.shared", shared_dir, replace=True)
    OmegaConf.register_new_resolver("qr.home", lambda: str(Path.home()), replace=True)
