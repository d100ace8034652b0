"""Names and file modes of what qrecipe writes for others to read (run folders, checkpoints,
exports, the model conversion cache).

Some writers create private files: safetensors' `save_file` writes 0600 (through a temporary
file), `tempfile.mkdtemp` makes 0700 folders. A checkpoint must be readable by whoever serves
it, so a finished folder gets the modes a plain `open()`/`mkdir()` would have given it under
the process's umask, before it is renamed into place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def safe_name(text: str) -> str:
    """Free text (a model name such as an hf path) as one folder or file name component: only
    letters, digits, `.`, `_` and `-`, other runs replaced by `_`, no leading or trailing `.`/`_`,
    so a name built from it stays inside the folder it is joined to."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def current_umask() -> int:
    """The process's umask (read from /proc where it can be: setting it to learn it is racy)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_modes(folder: Path) -> None:
    """Give folder and everything under it the modes open()/mkdir() would (0666/0777 less the umask)."""
    mask = current_umask()
    folder.chmod(0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            (Path(root) / name).chmod(0o777 & ~mask)
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                path.chmod(0o666 & ~mask)
