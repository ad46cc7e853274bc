"""DINM on SafeEdit: base vs edited DS, DG (four inputs and their mean), general-knowledge
locality, fluency and seconds per instance, as JSON.

    python -m trustedit.benchmarks.dinm_safeedit --limit 50 --out runs/dinm [--split first50|sample100|all]
        [--set lr=0.05 --set steps=10 ...] [--max-new-tokens 64] [--judge similarity|CLASSIFIER_FOLDER]
        [--sequential] [--model SPEC]

Reads $TRUSTEDIT_DATA_DIR/safeedit/. Writes, in ``--out``: ``rows.jsonl`` (one line per finished
instance, appended as it finishes, so an interrupted run resumes where it stopped), ``run.json``
(what decides the rows: model, data, config, generation length), ``results.json`` (the figures,
per-instance samples left out) and ``samples.json`` (responses, verdicts, layers, losses). The
single-instance protocol (edit -> evaluate -> revert) unless ``--sequential``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

FIGURES = ("DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ", "DG_avg", "fluency_ngram_entropy")


def figures(result: dict) -> dict:
    """The headline numbers: base and post of each metric (percent for DS/DG/locality)."""
    pct = lambda x: None if x is None else round(100 * x, 1)  # noqa: E731
    out = {}
    for k in FIGURES:
        b, p = result["base"].get(k), result["post"].get(k)
        if b is None:
            continue
        if k.startswith("fluency"):
            out[k] = {"base": round(b, 3), "post": round(p, 3)}
        else:
            out[k] = {"base": pct(b), "post": pct(p), "delta_points": pct(p - b)}
    out["locality"] = {"post": pct(result["post"]["locality"])}
    out["seconds_per_instance"] = result["seconds"]["per_instance"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--limit", type=int, default=None, help="first N instances of the split")
    ap.add_argument("--start", type=int, default=0, help="skip the first N instances (to split a run over processes "
                    "that write to separate --out folders; merge them by concatenating rows.jsonl and resuming)")
    ap.add_argument("--split", default="first50", help="first50 | sample100 | all (144 distinct ids) | three")
    ap.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="DINM config key=value (repeatable)")
    ap.add_argument("--config", default=None, help="DINM config JSON file")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--judge", default="similarity", help="'similarity' or a local sequence-classifier folder")
    ap.add_argument("--sequential", action="store_true", help="keep every edit (sequential editing)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--overwrite", action="store_true", help="discard rows of an earlier run in --out")
    ap.add_argument("--base-from", default=None, help="reuse the base-model side of the rows in this earlier --out "
                    "(same model, data, suffix and --max-new-tokens; checked)")
    args = ap.parse_args(argv)

    import torch

    from trustedit.data.safeedit import load_safeedit
    from trustedit.metrics.safety import make_judge
    from trustedit.models import load_model
    from trustedit.prompts import PromptFormat
    from trustedit.safety import dinm

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dinm.DINMConfig.resolve(args.config, args.sets)
    data = load_safeedit(args.split, limit=args.limit)
    del data[: args.start]
    lm = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = {"model": lm.describe(), "data": data.describe(), "config": cfg.to_dict(), "max_new_tokens": args.max_new_tokens,
           "sequential": args.sequential, "torch_threads": torch.get_num_threads()}
    key = {k: run[k] for k in ("config", "max_new_tokens", "sequential")} | {"model": lm.fingerprint,
                                                                               "data": data.fingerprint}
    rows_path, run_path = out / "rows.jsonl", out / "run.json"
    done = {}
    if run_path.is_file() and rows_path.is_file() and not args.overwrite and not args.sequential:
        old = json.loads(run_path.read_text())
        if old.get("key") != key:
            raise SystemExit(f"{out}: holds rows of another configuration; pass --overwrite or another --out")
        for line in rows_path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["id"]] = r
    else:
        rows_path.write_text("")
    run_path.write_text(json.dumps({**run, "key": key}, indent=1, default=str))

    def save(row):
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    base_rows = {}
    if args.base_from:
        src = Path(args.base_from)
        other = json.loads((src / "run.json").read_text())["key"]
        same = (other["model"] == lm.fingerprint and other["max_new_tokens"] == args.max_new_tokens
                and other["config"].get("system_suffix") == cfg.system_suffix
                and other["config"].get("max_length") == cfg.max_length)
        if not same:
            raise SystemExit(f"--base-from {src}: another model, suffix, max_length or --max-new-tokens")
        for line in (src / "rows.jsonl").read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                base_rows[r["id"]] = r
    todo = [x for x in data if x.id not in done]
    t0 = time.time()
    new = dinm.edit_rows(lm, todo, cfg, max_new_tokens=args.max_new_tokens, sequential=args.sequential, on_row=save,
                         base_rows=base_rows)
    by_id = {**done, **{r["id"]: r for r in new}}
    rows = [by_id[x.id] for x in data]
    fmt = PromptFormat()
    result = dinm.summarize(rows, make_judge(args.judge), cfg, max_new_tokens=args.max_new_tokens,
                            fmt_name=dinm.format_name(lm.tokenizer, cfg, fmt), sequential=args.sequential,
                            prompt_format={**fmt.describe(lm.tokenizer), "system_suffix": cfg.system_suffix})
    samples = result.pop("samples")
    result = {"figures": figures(result), **result, "run": run, "resumed_rows": len(done),
              "wall_seconds_this_run": round(time.time() - t0, 1),
              "command": "python -m trustedit.benchmarks.dinm_safeedit " + " ".join(argv if argv is not None else
                                                                                    __import__("sys").argv[1:])}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "samples.json").write_text(json.dumps(samples, indent=1))
    print(json.dumps(result["figures"], indent=1))


if __name__ == "__main__":
    main()
