"""`python -m service.cli <command>`: the `fresco` command, as `fresco up` starts its API and worker
children (and the tests and benches their stacks)."""

from __future__ import annotations

import sys

from service.cli import main

if __name__ == "__main__":
    sys.exit(main())
