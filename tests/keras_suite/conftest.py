"""Keras's ``testing.TestCase`` starts every test from a clean session (fresh automatic names)."""

import pytest

import polyak


@pytest.fixture(autouse=True)
def _clear_session():
    polyak.clear_session()
    yield
