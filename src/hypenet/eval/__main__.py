"""`python -m hypenet.eval MODEL ...` (= `hypenet eval`), `python -m hypenet.eval compare TEACHER STUDENT ...` and
`python -m hypenet.eval merge-evals PART PART ...`."""

import argparse
import sys

from .cli import register


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("eval", "compare", "merge-evals"):
        argv.insert(0, "eval")
    parser = argparse.ArgumentParser(prog="python -m hypenet.eval")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    from hypenet.errors import exit_code

    sys.exit(exit_code(main))
