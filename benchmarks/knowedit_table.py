"""The knowledge-editing table of `trustedit edit` runs: one row per run (method, dataset, mode, N),
the knowedit metrics after the edit in both protocols side by side (teacher-forced | generation),
and the seconds per edit.

    python -m trustedit.benchmarks.knowedit_table runs/rome runs/ft-m ... [--base]

``--base`` adds each dataset's unedited model as a row (the ``pre`` values).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = (("edit succ", "edit_succ"), ("rephrase", "rephrase"), ("portability", "portability"),
           ("locality", "locality"))


def _cell(ms: dict, key: str, side: str) -> str:
    e = ms.get(key)
    if not e or not e.get(side):
        return "–"
    return f"{100 * e[side]['value']:.1f}"


def rows(paths, base: bool = False) -> list[str]:
    head = ("| run | method | data | mode | N | " + " | ".join(f"{c} TF | {c} gen" for c, _ in COLUMNS)
            + " | fluency | s/edit |")
    out = [head, "|" + "---|" * (5 + 2 * len(COLUMNS) + 2)]
    seen = set()
    for p in paths:
        r = json.loads((Path(p) / "results.json").read_text())
        ms = r["metrics"].get("knowedit")
        if ms is None:
            continue
        opts = r["suites"]["knowedit"]["options"]
        data, n = opts["edit_data"], r["suites"]["knowedit"]["dataset"]["n"]
        mode = {"per_instance": "single"}.get(r["protocol"], r["protocol"])
        if base and data not in seen:
            seen.add(data)
            cells = " | ".join(f"{_cell(ms, k + '_tf', 'pre')} | {_cell(ms, k + '_gen', 'pre')}" for _, k in COLUMNS)
            flu = ms.get("fluency", {}).get("pre", {}).get("value")
            out.append(f"| – | unedited | {data} | – | {n} | {cells} | {flu:.2f} | – |")
        cells = " | ".join(f"{_cell(ms, k + '_tf', 'post')} | {_cell(ms, k + '_gen', 'post')}" for _, k in COLUMNS)
        flu = ms.get("fluency", {}).get("post", {}).get("value")
        edits = r.get("edits") or []
        fit = sum(e["seconds"]["fit"] for e in edits)
        count = sum(len(e["item"]) if isinstance(e.get("item"), list) else 1 for e in edits)
        per = f"{fit / count:.2f}" if count else "–"
        out.append(f"| `{Path(p).name}` | {r['method']['name']} | {data} | {mode} | {n} | {cells} | "
                   f"{'–' if flu is None else f'{flu:.2f}'} | {per} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--base", action="store_true", help="add the unedited model's row per dataset")
    a = ap.parse_args(argv)
    print("\n".join(rows(a.runs, a.base)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
