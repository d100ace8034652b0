"""Hydra configuration shipped with qrecipe (primary config and groups)."""
