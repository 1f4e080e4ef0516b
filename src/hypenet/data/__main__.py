"""python -m hypenet.data install|status|export: set up the built-in corpus, say which of its parts are there, or
write a source's documents to one (compressed) .jsonl file that another machine can read without the packages."""

from __future__ import annotations

import argparse
import sys

# The commands import what they use when they run: --help and argument errors answer at once (the package's lazy
# names keep numpy and torch out of them).


def status() -> int:
    from .builtin import PARTS, builtin_corpus_available, builtin_dir

    for part in PARTS:
        files = part.files()
        state = "ok" if files else "MISSING"
        print(f"{part.name:16s} {state:8s} {len(files):5d} files  {part.package}  ({part.licence})")
    print(f"npm parts live in {builtin_dir()} (set HYPENET_BUILTIN_DIR to move them)")
    return 0 if builtin_corpus_available() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hypenet.data", description=__doc__)
    parser.add_argument("command", choices=["install", "status", "export"],
                        help="install: npm-pack the npm parts and (as root) apt-get the Debian parts; "
                             "status: list the parts; export: write --source to FILE (e.g. corpus.jsonl.xz)")
    parser.add_argument("file", nargs="?", metavar="FILE", help="export: the .jsonl[.gz|.xz|.bz2] file to write")
    parser.add_argument("--source", default="builtin", help="export: the documents to write (default builtin)")
    parser.add_argument("--text-field", default="text",
                        help="export: the field (jsonl) or column (parquet) of --source holding the text "
                             "(default text)")
    args = parser.parse_args(argv)
    if args.command == "export":
        if not args.file:
            parser.error("export needs the FILE to write, e.g. python -m hypenet.data export corpus.jsonl.xz")
        from .sources import export_documents

        try:
            count = export_documents(args.source, args.file, text_field=args.text_field)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {count} documents of {args.source} to {args.file}; use it as --data {args.file}")
        return 0
    if args.command == "install":
        from .builtin import builtin_dir, install_debian_parts, install_npm_parts, missing_parts

        install_npm_parts(builtin_dir())
        if any(name.endswith("-docs") for name in missing_parts()):
            install_debian_parts()
    return status()


if __name__ == "__main__":
    from hypenet.errors import exit_code

    sys.exit(exit_code(main))
