"""The model description plans are made from (ModelInfo), kept per model source so that planning
the same model again does not pay for importing and building transformers' model classes.

Reading a model's structure means building its skeleton with transformers on the meta device:
on this project's 2-core machine, importing transformers' modeling code alone takes about 6 s,
far more than the resolution. The description is a pure function of the model's config (and of
the transformers and qrecipe code reading it), so it is cached under
`paths.cache/structures/<key>.json`, keyed by the config file's bytes (a GGUF: its path, size and
modification time), `trust_remote_code`, the transformers version and the source of the code that
reads it (describe.py and families.py, so editing either rebuilds every description). A hub id
(no local file to key by) is not cached. A cache file that cannot be read is rebuilt, with a
warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Callable

from ..files import current_umask
from .describe import ModelInfo
from .loading import locate
from .spec import ModelSpec

log = logging.getLogger(__name__)

# The code whose output is cached: its text is part of the key.
_READERS = (Path(__file__).with_name("describe.py"), Path(__file__).with_name("families.py"))


def structure_key(spec: ModelSpec) -> str | None:
    """What the description depends on, hashed; None when the source has no local file to key by."""
    loc = locate(spec)
    if not loc.local:
        return None
    folder = Path(loc.source)
    if loc.gguf_file:
        st = (folder / loc.gguf_file).stat()
        source = f"gguf|{(folder / loc.gguf_file).resolve()}|{st.st_size}|{int(st.st_mtime)}"
    else:
        source = "config|" + hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    readers = hashlib.sha256(b"".join(p.read_bytes() for p in _READERS)).hexdigest()
    parts = [readers, source, spec.revision, bool(spec.trust_remote_code), version("transformers")]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def cached_model_info(spec: ModelSpec, cache_root: Path, describe_model: Callable[[], ModelInfo]) -> ModelInfo:
    """The model's description: from the cache, else `describe_model()` (then cached)."""
    key = structure_key(spec)
    if key is None:
        return describe_model()
    path = cache_root / "structures" / f"{key}.json"
    if path.is_file():
        try:
            info = ModelInfo.from_dict(json.loads(path.read_text()))
            return dataclasses.replace(info, model_id=spec.name)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("model structure cache %s could not be read (%s); rebuilding it", path, e)
    info = describe_model()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(info.to_dict(), f)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private
        os.replace(tmp, path)  # atomic: concurrent planners never read half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return info
