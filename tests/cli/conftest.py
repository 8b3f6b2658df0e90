"""The command tests run on one intra-op thread."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """Every test here runs with one intra-op thread (tests/conftest.py's ``one_thread``)."""
