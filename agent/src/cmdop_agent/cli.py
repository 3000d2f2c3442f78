"""cmdop-agent command line."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("cmdop-agent: not implemented yet", file=sys.stderr)
    return 2
