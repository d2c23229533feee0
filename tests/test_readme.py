"""The README's interactive examples (its ``>>>`` blocks) print what the README shows."""

import doctest
import pathlib

import polyak

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_print_what_the_readme_shows():
    polyak.clear_session()
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE,
                              verbose=False, report=True)
    assert result.attempted >= 10 and result.failed == 0, result
