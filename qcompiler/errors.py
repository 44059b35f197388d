"""The one exception type qcompiler raises for bad input."""


class QCompilerError(Exception):
    """A user-facing error: one line naming what is wrong and what was expected.

    The CLI prints it without a traceback (unless --verbose) and exits non-zero.
    """
