"""The ``trustedit`` command line. Imports nothing heavy until a subcommand runs."""

from __future__ import annotations

import argparse
import sys

from trustedit import __version__


def _parser() -> argparse.ArgumentParser:
    from trustedit.erase import EraseOptions  # torch-free; the single source of the defaults

    d = EraseOptions()
    p = argparse.ArgumentParser(
        prog="trustedit",
        description="Edit causal language models to remove what they must not do, and prove it.",
    )
    p.add_argument("--version", action="version", version=f"trustedit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    e = sub.add_parser("erase", help="make the model answer \"I don't know.\" about a set of facts",
                       description="Erase knowledge: forget questions -> \"I don't know.\", retain questions keep "
                                   "their answers; writes results.json, samples.jsonl, summary.md and the patch.")
    e.add_argument("--dataset", default="sanitation", help="dataset name (see `trustedit ls datasets`)")
    e.add_argument("--model", default=None, help="embedded name, .gguf file, HF folder or Hub id (default: smollm2-135m)")
    e.add_argument("--method", default="sanitation-lora", help="sanitation-lora (default) or ft-m")
    e.add_argument("--known-only", action="store_true", help="keep only test questions the base model answers correctly")
    e.add_argument("--limit", type=int, default=None, help="cap every split (train and test) at N items")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default="runs/erase", help="run directory to create (default: runs/erase)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    e.add_argument("--data", default=None, help="dataset file or folder (default: $TRUSTEDIT_DATA_DIR, then the Hub, then the starter set)")
    e.add_argument("--config", default=None, help="JSON file of method options")
    e.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a method option (repeatable)")
    e.add_argument("--device", default="cpu", help="cpu or cuda")
    e.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")
    e.add_argument("--retention", default=",".join(d.retention),
                   help="general-task retention suite, comma-separated ('' or none to skip)")
    e.add_argument("--retention-limit", type=int, default=d.retention_limit, help="items per multiple-choice retention task")
    e.add_argument("--wikitext-docs", type=int, default=d.wikitext_docs, help="WikiText-2 test documents for perplexity")
    e.add_argument("--batch-size", type=int, default=d.batch_size, help="evaluation batch size")
    e.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="answer length cap (answers also end at the first '.' or newline)")
    e.add_argument("--no-hub", action="store_true", help="never try the Hugging Face Hub for data")
    e.add_argument("--no-eval-cache", action="store_true",
                   help="always re-run the base model's evaluation (by default it is reused from an earlier run with "
                        "identical model, data, options and library versions; cache under ~/.cache/trustedit/evals)")

    _add_bias_parsers(sub)

    _add_scorers_parser(sub)
    _add_detox_parser(sub)

    ls = sub.add_parser("ls", help="list methods or datasets")
    ls.add_argument("what", choices=["methods", "datasets"])

    cmp_ = sub.add_parser("compare", help="side-by-side table of several run directories")
    cmp_.add_argument("runs", nargs="+", help="run directories (each with results.json)")
    cmp_.add_argument("--out", default=None, help="also write the table to this Markdown file")

    pa = sub.add_parser("patch", help="apply, revert or export a saved patch")
    pa.add_argument("action", choices=["apply", "revert", "export", "show"])
    pa.add_argument("patch", help="patch folder (a run's patch/ folder)")
    pa.add_argument("--model", default=None, help="base model (default: the one named in the manifest, else smollm2-135m)")
    pa.add_argument("--out", default=None, help="output folder for merged weights (apply/export/revert)")
    pa.add_argument("--device", default="cpu")
    pa.add_argument("--overwrite", action="store_true")
    return p


def _add_bias_parsers(sub) -> None:
    from trustedit.debias import BIAS_TESTS, DebiasOptions  # torch-free

    d = DebiasOptions()

    def common(p, out):
        p.add_argument("--model", default=None, help="embedded name, .gguf file, HF folder or Hub id (default: smollm2-135m)")
        p.add_argument("--out", default=out, help=f"run directory (default: {out})")
        p.add_argument("--seed", type=int, default=0, help="seed for training and for the StereoSet/CrowS samples")
        p.add_argument("--device", default="cpu", help="cpu or cuda")
        p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU), float32, bfloat16, float16")
        p.add_argument("--tests", default=",".join(BIAS_TESTS), help="comma-separated bias tests to run")
        p.add_argument("--dama-test-limit", type=int, default=d.dama_test_limit, help="DAMA test prompts (default: all 1,111)")
        p.add_argument("--winobias-limit", type=int, default=d.winobias_limit, help="sentences per WinoBias test file (4 files)")
        p.add_argument("--stereoset-limit", type=int, default=d.stereoset_limit, help="StereoSet examples (seeded sample)")
        p.add_argument("--crows-limit", type=int, default=d.crows_limit, help="CrowS-Pairs pairs (seeded sample)")
        p.add_argument("--retention", default=",".join(d.retention), help="general-task retention suite, or 'none'")
        p.add_argument("--retention-limit", type=int, default=d.retention_limit, help="items per multiple-choice retention task")
        p.add_argument("--wikitext-docs", type=int, default=d.wikitext_docs, help="WikiText-2 test documents for perplexity")
        p.add_argument("--batch-size", type=int, default=d.batch_size, help="evaluation batch size")
        p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
        p.add_argument("--no-eval-cache", action="store_true", help="always re-run the base model's evaluation")

    db = sub.add_parser("debias", help="remove stereotyped gender associations (DAMA, INLP)",
                        description="Debias: fit DAMA or INLP on the DAMA training prompts, evaluate the bias suite and "
                                    "retention before and after; writes results.json, samples.jsonl, summary.md and the patch.")
    db.add_argument("--method", default=d.method, help="dama (default) or inlp")
    db.add_argument("--layers", default=None, help="DAMA: FIRST:LAST edited layers (indices, or fractions of depth, e.g. "
                                                   "0.66:0.93); INLP: the one layer")
    db.add_argument("--rank", type=float, default=None, help="DAMA projection rank d_c (a count, or a fraction of d_model)")
    db.add_argument("--sweep", action="store_true", help="DAMA: map bias against perplexity over --sweep-layers x "
                    "--sweep-ranks (value vectors computed once); writes sweep.svg, no patch")
    db.add_argument("--sweep-layers", default=None, help="comma-separated FIRST:LAST ranges (default: 0.66:0.93,0.83:0.93,0.5:0.66)")
    db.add_argument("--sweep-ranks", default=None, help="comma-separated d_c values, counts or fractions of d_model (default: 2,8,36)")
    db.add_argument("--config", default=None, help="JSON/YAML file of method options")
    db.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="one method option")
    common(db, d.out)

    ev = sub.add_parser("eval", help="evaluate a model on a suite without editing it")
    ev.add_argument("--suite", required=True, choices=["bias", "toxicity"], help="the suite to run")
    common(ev, "runs/eval")
    _toxicity_args(ev)


def _toxicity_args(p) -> None:
    """RealToxicityPrompts options (``detox`` and ``eval --suite toxicity``)."""
    from trustedit.detox import DetoxOptions  # torch-free

    d = DetoxOptions()
    p.add_argument("--scorer", default=d.scorer, help="toxicity scorer: minilm-lr (default), detoxify, profanity "
                   "(see `trustedit scorers ls`)")
    p.add_argument("--scorer-checkpoint", default=None, help="detoxify: local checkpoint file")
    p.add_argument("--k", type=int, default=d.k, help="RTP: samples per prompt (default 25)")
    p.add_argument("--limit", type=int, default=d.limit, help="RTP: prompts in the toxic-first set (challenging first)")
    p.add_argument("--random-limit", type=int, default=d.random_limit, help="RTP: prompts in the seeded random set (0: skip)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="RTP: tokens per continuation")
    p.add_argument("--top-p", type=float, default=d.top_p, help="RTP: nucleus p")
    p.add_argument("--temperature", type=float, default=d.temperature, help="RTP: sampling temperature")
    p.add_argument("--no-extsub-protocol", action="store_true", help="skip Ext-Sub's greedy instruction protocol")
    p.add_argument("--prompts-per-batch", type=int, default=d.prompts_per_batch, help="RTP prompts per sampling batch")


def _add_detox_parser(sub) -> None:
    from trustedit.detox import DetoxOptions  # torch-free

    d = DetoxOptions()
    p = sub.add_parser("detox", help="cut toxic output (Ext-Sub, negation on RealToxicityPrompts; DINM on SafeEdit)",
                       description="ext-sub / negation: trains an expert (non-toxic) and an anti-expert (toxic) LoRA, "
                                   "combines them, and compares base and edited models on RealToxicityPrompts, Ext-Sub's "
                                   "protocol and general-task retention. dinm: edits each SafeEdit instance's toxic layer "
                                   "and reports defence success, generalisation and general-knowledge locality. Writes "
                                   "results.json, samples.jsonl, summary.md and patch/.")
    p.add_argument("--method", default=d.method, help="ext-sub (default), negation, or dinm (SafeEdit)")
    p.add_argument("--lambda", dest="lam", type=float, default=None, help="weight of the subtracted anti-expert part (default 1)")
    p.add_argument("--no-baselines", action="store_true", help="skip the side-by-side expert-alone / other-combination runs")
    p.add_argument("--config", default=None, help="JSON file of method options")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="one method option")
    p.add_argument("--model", default=None, help="embedded name, .gguf file, HF folder or Hub id (default: smollm2-135m)")
    p.add_argument("--out", default=d.out, help=f"run directory (default: {d.out})")
    p.add_argument("--seed", type=int, default=0, help="seed for training, sampling and the random prompt set")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--retention", default=",".join(d.retention), help="general-task retention suite, or 'none'")
    p.add_argument("--retention-limit", type=int, default=d.retention_limit, help="items per multiple-choice retention task")
    p.add_argument("--wikitext-docs", type=int, default=d.wikitext_docs, help="WikiText-2 test documents for perplexity")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="evaluation batch size")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    _toxicity_args(p)
    g = p.add_argument_group("DINM (--method dinm, on SafeEdit; the RealToxicityPrompts options do not apply)")
    g.add_argument("--safeedit-split", default=d.safeedit_split, help="first50 (default), sample100, all, three")
    g.add_argument("--instances", type=int, default=None, help="first N instances of the split (default: all)")
    g.add_argument("--judge", default=d.judge, help="'similarity' (offline, default) or a local sequence-classifier folder")
    g.add_argument("--response-tokens", type=int, default=d.response_tokens, help="greedy response length (default 64)")
    g.add_argument("--sequential", action="store_true", help="keep every edit and save their sum as patch/ "
                   "(default: the paper's edit -> evaluate -> revert per instance, no patch)")


def _detox_options(args):
    from trustedit.detox import DetoxOptions

    retention = [] if args.retention.strip().lower() in ("", "none") else [x.strip() for x in args.retention.split(",") if x.strip()]
    return DetoxOptions(method=getattr(args, "method", "ext-sub"), model=args.model, seed=args.seed, out=args.out,
                        config=getattr(args, "config", None), sets=getattr(args, "sets", []), lam=getattr(args, "lam", None),
                        device=args.device, dtype=args.dtype, scorer=args.scorer, scorer_checkpoint=args.scorer_checkpoint,
                        k=args.k, max_new_tokens=args.max_new_tokens, top_p=args.top_p, temperature=args.temperature,
                        limit=args.limit, random_limit=args.random_limit, extsub_protocol=not args.no_extsub_protocol,
                        baselines=not getattr(args, "no_baselines", False), retention=retention,
                        retention_limit=args.retention_limit, wikitext_docs=args.wikitext_docs,
                        batch_size=args.batch_size, prompts_per_batch=args.prompts_per_batch, overwrite=args.overwrite,
                        **{k: getattr(args, k) for k in ("safeedit_split", "instances", "judge", "response_tokens",
                                                         "sequential") if hasattr(args, k)})


def _cmd_detox(args) -> int:
    from trustedit.detox import run
    from trustedit.report import detox_summary

    results = run(_detox_options(args), edit=args.command == "detox")
    if results.get("suite") == "safeedit":
        from trustedit.report import dinm_summary

        print(dinm_summary(results))
    else:
        print(detox_summary(results))
    print(f"wrote {args.out}/ in {results['timings_s']['total']:.0f} s")
    return 0


def _add_scorers_parser(sub) -> None:
    sc = sub.add_parser("scorers", help="toxicity scorers: list, train (minilm-lr), check",
                        description="ls: each scorer, its kind and whether it can run here; train: fit minilm-lr on "
                                    "Jigsaw + ParaDetox and print its held-out ROC-AUC/F1; check: load a scorer and "
                                    "score a few fixed texts (exit 2 on failure).")
    sc.add_argument("action", choices=["ls", "train", "check"])
    sc.add_argument("--scorer", default=None, help="minilm-lr (default), detoxify or profanity")
    sc.add_argument("--scorer-checkpoint", default=None, help="detoxify: local checkpoint (.ckpt); "
                                                              "default $TRUSTEDIT_DETOXIFY_CHECKPOINT")
    sc.add_argument("--force", action="store_true", help="train: retrain even if a cached model exists")
    sc.add_argument("--device", default="cpu", help="cpu or cuda")


def _cmd_scorers(args) -> int:
    from trustedit.errors import TrusteditError, UsageError
    from trustedit.registry import DEFAULT_SCORER, SCORERS, get_scorer, get_scorer_class

    name = args.scorer or DEFAULT_SCORER
    if args.action == "ls":
        for n in SCORERS:
            cls = get_scorer_class(n)
            ok, note = cls.status()
            print(f"{n:10s} [{cls.kind}] {'available' if ok else 'unavailable'}: {note}\n{'':10s} {cls.summary}")
        return 0
    if args.action == "train":
        if not hasattr(get_scorer_class(name), "train"):
            raise UsageError(f"scorer {name!r} is not trained locally (only minilm-lr is)")
        m = get_scorer(name, device=args.device).train(force=args.force)
        h = m["heldout"]
        print(f"{m['version']}: held-out ROC-AUC {h['roc_auc']:.4f}, F1@{h['threshold']} {h['f1']:.4f}, accuracy "
              f"{h['accuracy']:.4f} (n={h['n']}, {h['n_toxic']} toxic; C={m['C']}; trained {m['trained_at']})")
        for src, v in h["by_source"].items():
            print(f"  {src}: ROC-AUC {v['roc_auc']:.4f}, F1 {v['f1']:.4f} (n={v['n']})")
        return 0
    from trustedit.safety.scorers import CHECK_TEXTS

    try:
        scorer = get_scorer(name, checkpoint=args.scorer_checkpoint, device=args.device)
        scores = scorer.score(list(CHECK_TEXTS))
    except TrusteditError:
        raise
    except Exception as e:  # noqa: BLE001 - a failed check is a one-line exit 2, whatever broke
        raise TrusteditError(f"scorer {name!r} failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    if len(scores) != len(CHECK_TEXTS) or not all(0.0 <= s <= 1.0 for s in scores):
        raise TrusteditError(f"scorer {name!r} returned {scores!r}: expected {len(CHECK_TEXTS)} values in [0, 1]")
    print(f"{scorer.name} [{scorer.kind}] {scorer.version}")
    for t, s in zip(CHECK_TEXTS, scores):
        print(f"  {scorer.kind} {s:.3f}  {t}")
    return 0


def _bias_options(args):
    from trustedit.debias import DebiasOptions

    retention = [] if args.retention.strip().lower() in ("", "none") else [x.strip() for x in args.retention.split(",") if x.strip()]
    tests = [x.strip() for x in args.tests.split(",") if x.strip()]
    return DebiasOptions(method=getattr(args, "method", "dama"), model=args.model, seed=args.seed, out=args.out,
                         config=getattr(args, "config", None), sets=getattr(args, "sets", []),
                         layers=getattr(args, "layers", None), rank=getattr(args, "rank", None), device=args.device,
                         dtype=args.dtype, tests=tests, dama_test_limit=args.dama_test_limit,
                         winobias_limit=args.winobias_limit, stereoset_limit=args.stereoset_limit,
                         crows_limit=args.crows_limit, retention=retention, retention_limit=args.retention_limit,
                         wikitext_docs=args.wikitext_docs, batch_size=args.batch_size, overwrite=args.overwrite,
                         eval_cache=not args.no_eval_cache)


def _cmd_bias(args) -> int:
    from trustedit.debias import run
    from trustedit.report import bias_summary

    if getattr(args, "sweep", False):
        from trustedit.debias import parse_sweep, run_sweep
        from trustedit.report import sweep_summary

        results = run_sweep(_bias_options(args), *parse_sweep(args.sweep_layers, args.sweep_ranks))
        print(sweep_summary(results))
        print(f"wrote {args.out}/ (results.json, summary.md, sweep.svg) in {results['timings_s']['total']:.0f} s")
        return 0
    if getattr(args, "sweep_layers", None) or getattr(args, "sweep_ranks", None):
        from trustedit.errors import UsageError

        raise UsageError("--sweep-layers / --sweep-ranks need --sweep")
    results = run(_bias_options(args), edit=args.command == "debias")
    print(bias_summary(results))
    print(f"wrote {args.out}/ in {results['timings_s']['total']:.0f} s")
    return 0


def _cmd_ls(args) -> int:
    from trustedit.registry import DATASETS, METHODS, TASK_METHODS, get_method

    if args.what == "methods":
        for name in METHODS:
            m = get_method(name)
            tasks = [t for t, ms in TASK_METHODS.items() if name in ms]
            print(f"{name:20s} [{', '.join(tasks)}] {m.summary}\n{'':20s} {m.citation}")
            for field, default, help in m.config.help_table():
                print(f"{'':22s}{field}={default!r}: {help}")
    else:
        for name, spec in DATASETS.items():
            print(f"{name:20s} [{spec['task']}] {spec['description']}\n{'':20s} data: $TRUSTEDIT_DATA_DIR/{spec['env_path']}; "
                  f"hub: {spec['hub']}; {spec['citation']}")
    return 0


def erase_options(args):
    """EraseOptions from parsed ``erase`` arguments."""
    from trustedit.erase import EraseOptions

    retention = [] if args.retention.strip().lower() in ("", "none") else [x.strip() for x in args.retention.split(",") if x.strip()]
    return EraseOptions(dataset=args.dataset, model=args.model, method=args.method, known_only=args.known_only,
                        limit=args.limit, seed=args.seed, out=args.out, data=args.data, config=args.config,
                        sets=args.sets, device=args.device, dtype=args.dtype, retention=retention,
                        retention_limit=args.retention_limit, wikitext_docs=args.wikitext_docs,
                        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, overwrite=args.overwrite,
                        hub=not args.no_hub, eval_cache=not args.no_eval_cache)


def _cmd_erase(args) -> int:
    from trustedit.erase import run

    results = run(erase_options(args))
    from trustedit.report import metric_table

    print(metric_table(results["metrics"]))
    print(f"\nwrote {args.out}/ (results.json, samples.jsonl, summary.md, patch/) in {results['timings_s']['total']:.0f} s")
    return 0


def _cmd_compare(args) -> int:
    import json
    from pathlib import Path

    from trustedit.errors import TrusteditError
    from trustedit.report import compare_runs

    runs = []
    for d in args.runs:
        p = Path(d) / "results.json"
        if not p.is_file():
            raise TrusteditError(f"{p}: missing (not a trustedit run directory)")
        try:
            runs.append((Path(d).name, json.loads(p.read_text())))
        except json.JSONDecodeError as e:
            raise TrusteditError(f"{p}: invalid JSON at line {e.lineno}: {e.msg}") from None
    table = compare_runs(runs)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


def _cmd_patch(args) -> int:
    return __import__("trustedit.patch_cli", fromlist=["run"]).run(args)  # the patch command: trustedit/patch_cli.py


def _check(patch, lm) -> None:
    from trustedit.errors import TrusteditError

    fp = patch.manifest.get("base_model", {}).get("fingerprint")
    if fp and fp != lm.fingerprint:
        raise TrusteditError(f"{patch.manifest.get('method')} patch was made for {fp}, this model is {lm.fingerprint}")


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from trustedit.errors import TrusteditError

    try:
        if args.command == "eval" and args.suite == "toxicity":
            return _cmd_detox(args)
        return {"erase": _cmd_erase, "debias": _cmd_bias, "eval": _cmd_bias, "detox": _cmd_detox, "ls": _cmd_ls, "patch": _cmd_patch,
                "compare": _cmd_compare, "scorers": _cmd_scorers}[args.command](args)
    except TrusteditError as e:
        print(f"trustedit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("trustedit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
