"""Ray's microbenchmark figures on cellfleet: ``python benchmarks/microbenchmark.py [--json] ...``.

The same as ``python -m cellfleet.microbenchmark`` and ``cellfleet microbenchmark``; see
benchmarks/README.md for the options and the figures measured so far.
"""

import sys

from cellfleet.microbenchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
