"""User-facing errors: one line that names the problem and the allowed values.

Anything raised as `JetSpecError` is printed by the CLI as `error: ...` with exit code 2 and
shown by the app as a message; every other exception is a bug.
"""


class JetSpecError(Exception):
    """A problem the user can fix (bad input, missing file, mismatched head)."""
