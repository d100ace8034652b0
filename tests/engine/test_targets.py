"""The local machine as a target: its memory is read, never guessed."""

from __future__ import annotations

import os

import psutil
import pytest

from qrecipe.engine import targets
from qrecipe.engine.errors import ConfigError


def test_host_memory_is_this_machines():
    assert targets.host_memory_gib() == pytest.approx(psutil.virtual_memory().total / 2**30, rel=0.01)


def test_unreadable_host_memory_is_an_error_naming_the_setting(monkeypatch):
    def unreadable(*args):
        raise OSError("no sysconf here")

    monkeypatch.setattr(os, "sysconf", unreadable)
    monkeypatch.setattr(psutil, "virtual_memory", unreadable)
    with pytest.raises(ConfigError, match=r"^target\.memory_gib: cannot read this machine's memory .*; set "
                                          r"target\.memory_gib=GIB$"):
        targets.host_memory_gib()
