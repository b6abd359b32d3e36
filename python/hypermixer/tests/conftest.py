"""Fixtures of the shipped conformance suite."""

import pytest

import hypermixer


@pytest.fixture(autouse=True)
def restore_threads():
    """Tests may change the thread count; every test starts from the default (all cores)."""
    yield
    hypermixer.set_num_threads(None)
