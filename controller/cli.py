"""laserctl: not implemented yet (its own issue). It says so rather than pretend to work."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("laserctl: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
