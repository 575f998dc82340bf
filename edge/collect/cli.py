"""``edge-collect``: review the frames ``edge-classify --collect DIR`` kept, from the command line.

    edge-collect review DIR                         # the unreviewed frames: file, model's label, score, sampler
    edge-collect confirm DIR FILE...                # the model was right: to DIR/labelled/<its label>/
    edge-collect relabel DIR FILE... --to LABEL     # it was wrong: to DIR/labelled/LABEL/
    edge-collect discard DIR FILE...                # not worth training on: deleted
    edge-collect status DIR                         # frames per class, unreviewed and labelled
    edge-train --arch mobilenet_v2 --data DIR/labelled --out retrained.pt ...

FILE is a path as ``review`` prints it (relative to DIR), or any path to the same file; anything that is
not a frame in ``DIR/unreviewed/<label>/`` (``..``, a symlink, another folder) is refused and nothing moves.
Every decision is appended to ``DIR/decisions.jsonl``. Exit codes: 0 done; 2 a usage error or a refused file.
Standard library only (Python 3.6+), like the rest of the device side.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from edge import __version__
from edge.errors import EXIT_OK, EdgeError, add_version, parse_arguments, run_guarded
from edge.collect.folder import LABELLED, UNREVIEWED, counts, decide, manifest_entries, unreviewed

PROG = "edge-collect"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Review the frames edge-classify --collect kept.")
    add_version(parser, __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    review = commands.add_parser("review", help="list the unreviewed frames")
    review.add_argument("dir", type=Path, metavar="DIR")
    review.add_argument("--json", action="store_true", help="one JSON object per frame")
    status = commands.add_parser("status", help="frames per class, unreviewed and labelled")
    status.add_argument("dir", type=Path, metavar="DIR")
    status.add_argument("--json", action="store_true", help="as one JSON object")
    for name, text in (("confirm", "the model's label is right: move to DIR/labelled/<label>/"),
                       ("relabel", "move to DIR/labelled/LABEL/"), ("discard", "delete")):
        command = commands.add_parser(name, help=text)
        command.add_argument("dir", type=Path, metavar="DIR")
        command.add_argument("files", type=Path, nargs="+", metavar="FILE")
        if name == "relabel":
            command.add_argument("--to", required=True, metavar="LABEL", help="the right label")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, code = parse_arguments(build_parser(), argv)
    if args is None:
        return code
    return run_guarded(PROG, lambda: run(args), verbose=False, expected=(EdgeError, OSError))


def run(args: argparse.Namespace) -> int:
    root: Path = args.dir
    if not root.is_dir():
        from edge.collect.folder import ReviewError

        raise ReviewError(f"{root}: not a folder (edge-classify --collect {root} makes one)")
    if args.command == "review":
        print_review(root, args.json)
    elif args.command == "status":
        print_status(root, args.json)
    else:
        moved = decide(root, args.files, args.command, getattr(args, "to", None))
        verb = {"confirm": "confirmed", "relabel": "relabelled", "discard": "discarded"}[args.command]
        print(f"{verb} {len(moved)} frame{'s' if len(moved) != 1 else ''}")
    return EXIT_OK


def print_review(root: Path, as_json: bool) -> None:
    entries = manifest_entries(root)
    frames = unreviewed(root)
    for frame in frames:
        entry = entries.get(frame.path.name, {})
        relative = f"{UNREVIEWED}/{frame.label}/{frame.path.name}"
        if as_json:
            print(json.dumps({"file": relative, "id": frame.id, "label": frame.label, "score": entry.get("score"),
                              "sampler": entry.get("sampler"), "topk": entry.get("topk")}, ensure_ascii=False))
        else:
            score = entry.get("score")
            shown = f"{score:.2f}" if isinstance(score, (int, float)) else "?"
            print(f"{relative}\t{frame.label}\t{shown}\t{entry.get('sampler') or '?'}")
    if not as_json:
        print(f"{len(frames)} unreviewed in {root}: edge-collect confirm|discard {root} FILE..., "
              f"edge-collect relabel {root} FILE... --to LABEL", file=sys.stderr)


def print_status(root: Path, as_json: bool) -> None:
    table = counts(root)
    if as_json:
        print(json.dumps(table, ensure_ascii=False))
        return
    labels: List[str] = sorted(set(table[UNREVIEWED]) | set(table[LABELLED]))
    print(f"{'label':30} {'unreviewed':>10} {'labelled':>10}")
    for label in labels:
        print(f"{label[:30]:30} {table[UNREVIEWED].get(label, 0):>10} {table[LABELLED].get(label, 0):>10}")
    print(f"{'total':30} {sum(table[UNREVIEWED].values()):>10} {sum(table[LABELLED].values()):>10}")


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
