"""Text for evaluation and calibration: local files first, hub datasets for users online."""

from .calibration import calibration_windows
from .text import check_data, load_documents, token_windows

__all__ = ["calibration_windows", "check_data", "load_documents", "token_windows"]
