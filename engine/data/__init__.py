"""Text for evaluation and calibration: local files first, hub datasets for users online."""

from .text import check_data, load_documents, token_windows

__all__ = ["check_data", "load_documents", "token_windows"]
