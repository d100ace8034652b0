"""Where models come from (local folder, GGUF, the PyPI-packaged default, the hub), their
structure on the meta device, and architecture facts kept as data."""
