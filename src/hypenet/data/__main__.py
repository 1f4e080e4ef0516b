"""python -m hypenet.data install|status: set up the built-in corpus, or say which of its parts are there."""

from __future__ import annotations

import argparse
import sys

from .builtin import (
    PARTS, builtin_corpus_available, builtin_dir, install_debian_parts, install_npm_parts, missing_parts,
)


def status() -> int:
    for part in PARTS:
        files = part.files()
        state = "ok" if files else "MISSING"
        print(f"{part.name:16s} {state:8s} {len(files):5d} files  {part.package}  ({part.licence})")
    print(f"npm parts live in {builtin_dir()} (set HYPENET_BUILTIN_DIR to move them)")
    return 0 if builtin_corpus_available() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hypenet.data", description=__doc__)
    parser.add_argument("command", choices=["install", "status"],
                        help="install: npm-pack the npm parts and (as root) apt-get the Debian parts; "
                             "status: list the parts")
    args = parser.parse_args(argv)
    if args.command == "install":
        install_npm_parts(builtin_dir())
        if any(name.endswith("-docs") for name in missing_parts()):
            install_debian_parts()
    return status()


if __name__ == "__main__":
    sys.exit(main())
