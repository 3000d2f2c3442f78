"""The one exception type that reaches the operator.

Raise ``UserError("site.toml:12: domain: must be a DNS name (set domain = \"cmdop.example.com\")")``
anywhere; ``cli.main`` prints it as one line on stderr and exits with its code. Nothing else
is allowed to escape as a traceback (see ``cli.main``).
"""


class UserError(Exception):
    """A problem the operator can fix; the message says what and how. Never holds a secret."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
