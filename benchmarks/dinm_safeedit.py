"""DINM on SafeEdit: base vs edited DS, DG (four inputs and their mean), general-knowledge
locality, fluency and seconds per instance, through the job skeleton (``trustedit detox --method
dinm``), printed as the figures table of ``benchmarks/RESULTS.md`` §7.

    python -m trustedit.benchmarks.dinm_safeedit --out runs/dinm [detox flags: --instances 50
        --safeedit-split first50 --set lr=0.00625 --judge similarity --sequential ...]

The base model's responses come from the evaluation cache when an earlier run measured the same
instances with the same model, prompts and generation length (so a sweep over ``--set lr=...``
measures the base model once).
"""

from __future__ import annotations

import argparse

FIGURES = ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ", "DG_avg", "fluency_ngram_entropy", "locality",
           "knowledge_agreement")


def figures(results: dict) -> dict:
    """The headline numbers: base and post of each metric (percent for DS/DG/locality)."""
    pct = lambda x: None if x is None else round(100 * x, 1)  # noqa: E731
    ms = results["metrics"]["safeedit"]
    out = {}
    for k in FIGURES:
        if k not in ms:
            continue
        b, p = ms[k]["pre"]["value"], ms[k]["post"]["value"]
        if k.startswith("fluency"):
            out[k] = {"base": round(b, 3), "post": round(p, 3)}
        else:
            out[k] = {"base": pct(b), "post": pct(p), "delta_points": pct(p - b)}
    e = results["edits"]
    out["seconds_per_instance"] = round(sum(x["seconds"]["fit"] + x["seconds"]["post_eval"] for x in e) / len(e)
                                        + results["timings_s"].get("pre_eval", 0) / len(e), 2)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="run directory")
    args, rest = ap.parse_known_args(argv)
    from trustedit.cli import _parser, job_plan
    from trustedit.job import run

    p = job_plan(_parser().parse_args(["detox", "--method", "dinm", "--out", args.out, *rest]))
    r = run(p)
    from trustedit.benchmarks.erase_timing import forward_throughput, machine
    from trustedit.models import load_model

    tps = forward_throughput(load_model(p.opts.model, p.opts.device, p.opts.dtype))
    print(f"machine: {machine()}; forward throughput {tps:.0f} tokens/s (16 x 64 batch, fp32)")
    print("| metric | base | post | change (points) |\n|---|---|---|---|")
    for k, v in figures(r).items():
        if isinstance(v, dict):
            print(f"| {k} | {v['base']} | {v['post']} | {v.get('delta_points', '')} |")
    print(f"\nseconds per instance: {figures(r)['seconds_per_instance']}")


if __name__ == "__main__":
    main()
