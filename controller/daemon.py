"""laserd: not implemented yet (its own issue). It says so rather than pretend to run."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("laserd: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
