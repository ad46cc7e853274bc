"""`trustedit locate`: where a model keeps the facts of an editing dataset.

For each of the first ``--n`` cases of ``--dataset``: ROME's causal tracing
(:mod:`trustedit.locate`; hidden states, MLP and attention outputs restored over layers ×
positions) drawn as ``trace_<i>.svg``, and, with ``--kn``, the knowledge neurons of the fact
(:mod:`trustedit.methods.kn`) with their Hit@k before and after a KN edit of the case. The layer
``--layer auto`` would give an editor (the indirect effect of the MLPs at the last subject token,
averaged over the cases) is reported. Writes ``locate.json``, ``summary.md`` and the SVGs
atomically into ``--out``.

Parsing here is torch-free; the work imports torch lazily.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    from trustedit.data.knowedit import DATASETS

    p = sub.add_parser("locate", help="causal tracing (and knowledge neurons) of the facts of an editing dataset",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--model", default=None, help="model (default: the embedded smollm2-135m)")
    p.add_argument("--dataset", default="zsre", choices=DATASETS, help="editing dataset (default zsre)")
    p.add_argument("--n", type=int, default=3, help="first N cases (default 3)")
    p.add_argument("--kind", default="all", choices=["all", "hidden", "mlp", "attn"], help="states restored (default all)")
    p.add_argument("--samples", type=int, default=10, help="noise draws per cell (default 10, the paper's)")
    p.add_argument("--window", type=int, default=10, help="MLP/attention window in layers (default 10, the paper's)")
    p.add_argument("--noise", type=float, default=None, help="noise std (default: 3 x the embeddings' std)")
    p.add_argument("--kn", action="store_true", help="also locate knowledge neurons and their Hit@k before/after a KN edit")
    p.add_argument("--k", type=int, default=10, help="k of Hit@k (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", default="runs/locate", help="folder to write (default runs/locate)")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    import time

    from trustedit import rundir
    from trustedit.data.knowedit import load
    from trustedit.errors import UsageError
    from trustedit.locate import KINDS, causal_trace, trace_many_svg
    from trustedit.methods.requests import EditRequest
    from trustedit.models import load_model
    from trustedit.provenance import results_header

    for name in ("n", "samples", "window", "k"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} {getattr(args, name)}: expected an integer >= 1")
    if args.noise is not None and not args.noise > 0:
        raise UsageError(f"--noise {args.noise}: expected a number > 0")
    rundir.check_target(args.out, args.overwrite)
    data = load(args.dataset, args.n)
    requests = [EditRequest(c.prompt, c.subject, c.target_new, c.id).check(data.path) for c in data.cases]
    t0 = time.time()
    lm = load_model(args.model, args.device, args.dtype)
    kinds = KINDS if args.kind == "all" else (args.kind,)
    cases, svgs = [], {}
    from tqdm.auto import tqdm

    for i, req in enumerate(tqdm(requests, desc="locate", unit="case")):
        traces = [causal_trace(lm, req, kind=k, window=args.window, samples=args.samples, noise=args.noise,
                               seed=args.seed) for k in kinds]
        case = {"id": req.id, "prompt": req.prompt, "subject": req.subject,
                "traces": {t["kind"]: t for t in traces}}
        if args.kn:
            case["kn"] = _kn(lm, req, args)
        cases.append(case)
        svgs[f"trace_{i}.svg"] = traces
    # the layer an editor's --layer auto would take: mean MLP indirect effect at the last subject token
    auto = None
    if "mlp" in kinds:
        n_layers = len(cases[0]["traces"]["mlp"]["indirect_effect"])
        per_layer = [sum(c["traces"]["mlp"]["indirect_effect"][L][c["traces"]["mlp"]["subject_range"][1]]
                         for c in cases) / len(cases) for L in range(n_layers)]
        auto = {"kind": "mlp", "at": "last subject token", "per_layer": per_layer,
                "layer": max(range(n_layers), key=lambda L: per_layer[L])}
    out = {**results_header("locate", None, lm), "dataset": data.describe(),
           "options": {k: getattr(args, k) for k in ("n", "kind", "samples", "window", "noise", "kn", "k", "seed")},
           "auto_layer": auto, "cases": cases, "seconds": round(time.time() - t0, 1)}
    with rundir.atomic_dir(args.out, args.overwrite) as tmp:
        for name, traces in svgs.items():
            trace_many_svg(traces, tmp / name)
        rundir.write_json(tmp / "locate.json", out)
        (tmp / "summary.md").write_text(_summary(out), encoding="utf-8")
    print(_summary(out))
    print(f"wrote {args.out}/ in {out['seconds']:.0f} s")
    return 0


def _kn(lm, req, args) -> dict:
    from trustedit.methods.kn import KNConfig, fit, hit_at_k

    cfg = KNConfig(seed=args.seed)
    patch = fit(lm, [req], cfg)
    tr = patch.manifest["training"]
    neurons = tr["neurons"][0] if tr.get("neurons") else []
    hit = hit_at_k(lm, req, neurons, k=args.k, patch=patch, layers=tr.get("layers"))
    return {"neurons": neurons, "hit_at_k": hit, "edit": tr["per_request"][0]}


def _summary(out: dict) -> str:
    lines = [f"# trustedit locate: {out['dataset']['name']} ({len(out['cases'])} cases)", "",
             f"- model: `{out['model'].get('spec')}` fingerprint `{str(out['model'].get('fingerprint'))[:28]}…`",
             f"- causal tracing (Meng et al. 2022): noise on the subject's embeddings, one state restored at a time; "
             f"{out['options']['samples']} noise draws, window {out['options']['window']}", ""]
    if out.get("auto_layer"):
        a = out["auto_layer"]
        lines += [f"`--layer auto` would edit layer **{a['layer']}** (largest mean MLP indirect effect at the last "
                  f"subject token, {a['per_layer'][a['layer']]:.3f}).", ""]
    head = "| case | answer | p clean | p corrupt | " + " | ".join(
        f"{k} best layer (peak layer, token)" for k in out["cases"][0]["traces"]) + " |"
    lines += [head, "|" + "---|" * (4 + len(out["cases"][0]["traces"]))]
    for i, c in enumerate(out["cases"]):
        t0 = next(iter(c["traces"].values()))
        cells = []
        for t in c["traces"].values():
            pk = t.get("peak") or {}
            cells.append(f"{t['best_layer']} ({pk.get('layer')}, {t['tokens'][pk['position']] if 'position' in pk else '?'!r})")
        lines.append(f"| {i}: {c['prompt'][:50]} | {t0['answer']!r} | {t0['p_clean']:.3f} | {t0['p_corrupt']:.3f} | "
                     + " | ".join(cells) + " |")
    if any("kn" in c for c in out["cases"]):
        lines += ["", "Knowledge neurons (Dai et al. 2022) and Hit@k (share of the located neurons in the top k of the "
                  "attribution: for the old answer before the edit, for the new answer after a KN edit):", "",
                  "| case | neurons | Hit@k old (before) | Hit@k new (after) | new target prob before → after |",
                  "|---|---|---|---|---|"]
        for i, c in enumerate(out["cases"]):
            k = c.get("kn")
            if not k:
                continue
            h, e = k["hit_at_k"], k["edit"]
            lines.append(f"| {i} | {len(k['neurons'])} | {h['old']} | {h['new']} | "
                         f"{e.get('target_prob_before')} → {e.get('target_prob_after')} |")
    lines += ["", "Files: `locate.json` (every grid), `trace_<i>.svg` (hidden / MLP / attention heat maps).", ""]
    return "\n".join(lines)
