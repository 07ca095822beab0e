"""`python -m trainguard.sidecar`: the integrity sidecar (and, with --probe, its startup probe)."""

import sys

from trainguard.sidecar.server import main

if __name__ == "__main__":
    sys.exit(main())
