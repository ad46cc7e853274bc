"""Trade-off sweep for the erase job on the job skeleton: one base evaluation, then one edit per
configuration (fitted, applied, evaluated with the suites of ``trustedit erase``, reverted).

    python -m trustedit.benchmarks.sanitation_sweep --out runs/sweep \\
        --config "method=sanitation-lora epochs=2" --config "method=ft-m epochs=4" [erase flags...]

Every metric is also reported on the test questions the base model answers correctly
(``known/<metric>``, the sanitation suite's ``--known-subset``). Writes the standard run directory
(results.json with one entry per point, summary.md) and prints one line per point.
"""

from __future__ import annotations

import argparse


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", required=True, help='"method=NAME key=value ..." (one point)')
    ap.add_argument("--out", required=True)
    args, rest = ap.parse_known_args(argv)

    from trustedit.cli import _parser, job_options, _suite_values
    from trustedit.errors import UsageError
    from trustedit.job import plan, run
    from trustedit.jobs import JOBS

    ns = _parser().parse_args(["erase", "--out", args.out, *rest])
    points = []
    for spec in args.config:
        kv = dict(x.split("=", 1) for x in spec.split())
        if "method" not in kv:
            raise UsageError(f"--config {spec!r}: needs method=NAME")
        points.append({"label": spec, "method": kv.pop("method"), "sets": [f"{k}={v}" for k, v in kv.items()]})
    values = {**_suite_values(ns), "known_subset": True}
    p = plan(JOBS["erase"], job_options(ns), points[0]["method"], suite_values=values, explicit=set(values),
             sweep=points, task="erase-sweep")
    r = run(p)
    for pt in r["points"]:
        m = pt["metrics"]["sanitation"]
        g = lambda k: m[k]["post"]["value"] if k in m else float("nan")  # noqa: E731
        print(f"{pt['label']}: K_S {g('K_S_idk_rate'):.3f} over-refusal {g('over_refusal_rate'):.3f} "
              f"near {g('near_over_refusal_rate'):.3f} "
              f"loc {g('locality'):.3f} K_R {m['K_R_retain_accuracy']['pre']['value']:.3f}->{g('K_R_retain_accuracy'):.3f} "
              f"known K_S {g('known/K_S_idk_rate'):.3f} fit {pt['seconds']['fit']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
