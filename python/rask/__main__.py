"""`python -m rask COMMAND ...`: `worker` runs a Python worker (see `rask.worker`)."""

import sys


def _main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] != "worker":
        print("usage: python -m rask worker MODULE [MODULE...] [--pool py] [--concurrency N] "
              "[--processes N] [--config FILE]", file=sys.stderr)
        return 2
    from .worker import main

    return main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(_main())
