"""``trustedit data ls|fetch|check``: the argparse part and its runner (torch-free).

* ``ls [NAMES...]``: each dataset, whether its files are in the data root, size, licence, source.
* ``fetch [NAMES...] [--to DIR] [--mirror URL]``: download the missing files, verified by SHA-256.
* ``check [NAMES...]``: hash every present file; exit 2 when one differs from the recorded SHA-256.

The data root is ``$TRUSTEDIT_DATA_DIR`` when set, else ``$TRUSTEDIT_CACHE/data`` (see
:mod:`trustedit.data.paths`). Errors are one line (exit 2) through :mod:`trustedit.errors`.
"""

from __future__ import annotations

import os
import sys


def add_parser(subparsers) -> None:
    """Register ``data`` (with its actions ls, fetch, check) on the CLI's subparsers."""
    p = subparsers.add_parser(
        "data", help="list, download and verify the datasets (ls, fetch, check)",
        description="Datasets live in the data root: $TRUSTEDIT_DATA_DIR when set, else $TRUSTEDIT_CACHE/data "
                    "(default ~/.cache/trustedit/data). ls: what is there; fetch: download from each file's pinned "
                    "public origin (or a mirror), verified by SHA-256; check: verify the files present.")
    actions = p.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    names = {"nargs": "*", "metavar": "NAME", "help": "datasets (default: all; see 'trustedit data ls')"}
    actions.add_parser("ls", help="each dataset: present or missing, size, licence, source").add_argument("names", **names)
    f = actions.add_parser("fetch", help="download missing files (verified by SHA-256)",
                           description="Download each missing file, verify its SHA-256 and only then move it into "
                                       "place; files already present with the right SHA-256 are skipped.")
    f.add_argument("names", **names)
    f.add_argument("--to", default=None, metavar="DIR", help="folder to fill (default: the data root)")
    f.add_argument("--mirror", default=None, metavar="URL",
                   help="a data root served over HTTP: fetch every file from URL/PATH instead of its public "
                        "origin (default: $TRUSTEDIT_DATA_MIRROR)")
    f.add_argument("--timeout", type=float, default=60.0, metavar="S", help="network timeout in seconds (default 60)")
    actions.add_parser("check", help="verify the SHA-256 of every present file").add_argument("names", **names)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _root_line() -> str:
    from trustedit.data.paths import ENV_VAR, data_root

    root = data_root(check=False)
    how = f"${ENV_VAR}" if os.environ.get(ENV_VAR) else f"default; ${ENV_VAR} is not set"
    return f"data root: {root} ({how}{'' if root.is_dir() else '; not there yet'})"


def _ls(args) -> int:
    from trustedit.data.fetch import status

    rows = status(args.names)
    print(_root_line())
    for r in rows:
        have = r["files"] - len(r["missing"])
        state = "present" if r["present"] else "missing" if not have else "partial"
        print(f"{r['name']:22s} {state:8s} {have:>2d}/{r['files']:<2d} files {_size(r['bytes']):>8s}  {r['license']}")
        print(f"{'':22s} {r['description']}")
        print(f"{'':22s} source: {r['source']}" + (f" (derived: {len(r['derived'])} file(s) rebuilt by a transform)"
                                                    if r["derived"] else ""))
    done = sum(r["present"] for r in rows)
    print(f"{done} of {len(rows)} datasets present" + ("" if done == len(rows) else
          "; get the others with 'trustedit data fetch NAME...' (all: 'trustedit data fetch')"))
    return 0


def _fetch(args) -> int:
    from trustedit.data.fetch import fetch

    def report(row):
        if row["status"] == "fetched":
            print(f"fetched       {row['file']}")
        elif row["status"] != "present":
            print(f"{row['status']:13s} {row['error']}")
        sys.stdout.flush()

    rows = fetch(args.names, to=args.to, mirror=args.mirror, timeout=args.timeout, report=report)
    count = {s: sum(r["status"] == s for r in rows) for s in ("fetched", "present", "not fetchable")}
    from trustedit.data.paths import data_root

    where = args.to or data_root(check=False)
    print(f"{count['fetched']} file(s) fetched, {count['present']} already present"
          + (f", {count['not fetchable']} not fetchable" if count["not fetchable"] else "") + f" in {where}")
    return 0


def _check(args) -> int:
    from trustedit.data.fetch import check
    from trustedit.errors import TrusteditError

    rows = check(args.names)
    print(_root_line())
    missing = {}
    for r in rows:
        if r["status"] == "mismatch":
            print(f"mismatch  {r['file']}: sha256 {r['actual']}, expected {r['expected']}")
        elif r["status"] == "missing":
            missing.setdefault(r["dataset"], []).append(r["file"])
    for name, files in missing.items():
        print(f"missing   {name}: {len(files)} file(s), e.g. {files[0]} (trustedit data fetch {name})")
    bad = [r for r in rows if r["status"] == "mismatch"]
    n_ok, n_missing = sum(r["status"] == "ok" for r in rows), sum(len(v) for v in missing.values())
    print(f"{n_ok} file(s) ok, {n_missing} missing, {len(bad)} mismatched")
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise TrusteditError(f"{bad[0]['file']}: sha256 {bad[0]['actual']} differs from the recorded "
                             f"{bad[0]['expected']}{more}")
    return 0


def run(args) -> int:
    """Run ``trustedit data ACTION``; returns the exit code (errors raise TrusteditError)."""
    return {"ls": _ls, "fetch": _fetch, "check": _check}[args.data_action](args)
