"""``python -m tests.chaos --minutes 10 [--seed N]``: a long chaos run, by hand."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from chaos_run import run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="mean seconds between faults (default 1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        report = run_chaos(args.seed, args.minutes * 60, Path(scratch), args.interval)
    print(report.summary())
    for line in report.wrong:
        print("wrong:", line)
    return 1 if report.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
