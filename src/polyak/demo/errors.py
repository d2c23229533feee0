"""``DemoError``: a mistake in how the demo was asked to run, told in one line."""


class DemoError(Exception):
    """A user error (bad option, unusable ``--out``, corrupt checkpoint, missing package).

    The command line prints its message and exits non-zero, without a traceback.
    """
