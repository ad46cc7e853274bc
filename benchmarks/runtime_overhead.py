"""Inference overhead of the editors that act while the model runs (SERAC, IKE, GRACE): seconds per
1,000 prompts against the base model.

    python -m trustedit.benchmarks.runtime_overhead --build serac:1000 --build ike:1000 \\
        --patch runs/grace_seq1000/patch --prompts 1000 [--json out.json]

Prompts: the rephrase and locality prompts of the first ZsRE test cases of KnowEdit (about half of
them about an edited fact when the memory holds those cases' edits, half not), greedy decoding of
``--tokens`` new tokens through :func:`trustedit.prompts.generate` (batch size 16, left padding, the KV
cache), the same prompts for the base model and for each patch. ``--build M:N`` fits method M on the
first N ZsRE edits (one fit: the memory a sequential run would hold); ``--patch`` loads a saved patch.
Reports seconds per 1,000 prompts, the ratio to the base model, and how many prompts each patch took
in scope (SERAC) or deferred to its codebook (GRACE).
"""

from __future__ import annotations

import argparse
import resource
import time

from trustedit.benchmarks import emit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patch", action="append", default=[], help="a saved patch folder (repeatable)")
    ap.add_argument("--build", action="append", default=[], help="METHOD:N, e.g. serac:1000 (repeatable)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="METHOD.key=value for --build")
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import torch

    from trustedit.data.knowedit import load
    from trustedit.methods.requests import EditRequest, RequestBatch
    from trustedit.models import load_model
    from trustedit.patch import Patch
    from trustedit.prompts import generate
    from trustedit.registry import get_method

    lm = load_model(a.model)
    tok = lm.tokenizer
    cases = load("zsre", limit=max(a.prompts, 1000)).cases
    texts = []
    for c in cases:
        texts += c.rephrase[:1] + [p for rows in c.locality.values() for p, _ in rows][:1]
        if len(texts) >= a.prompts:
            break
    texts = texts[:a.prompts]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    def timed():
        t0 = time.perf_counter()
        generate(lm.model, tok, prompts, a.tokens, a.batch_size, share_prefix=False)
        return time.perf_counter() - t0

    patches = []
    for spec in a.build:
        name, _, n = spec.partition(":")
        m = get_method(name)
        sets = [s.split(".", 1)[1] for s in a.sets if s.startswith(name + ".")]
        reqs = [EditRequest(c.prompt, c.subject, c.target_new, c.id) for c in cases[:int(n or 1000)]]
        t0 = time.perf_counter()
        p = m.fit(lm, RequestBatch(reqs), m.config.resolve(None, sets))
        patches.append((f"{name} ({len(reqs)} edits in memory)", p, round(time.perf_counter() - t0, 1)))
    for folder in a.patch:
        p = Patch.load(folder)
        patches.append((f"{p.method} ({folder})", p, None))

    base = timed()
    rows = [{"model": "base", "seconds": round(base, 2), "per_1000": round(base * 1000 / len(prompts), 2)}]
    for label, p, fit_s in patches:
        p.apply(lm.model)
        try:
            s = timed()
            stats = dict(getattr(p.gate, "stats", {}) or {})
        finally:
            p.revert(lm.model)
        rows.append({"model": label, "seconds": round(s, 2), "per_1000": round(s * 1000 / len(prompts), 2),
                     "ratio": round(s / base, 2), "fit_seconds": fit_s, "stats": stats})
    out = {"prompts": len(prompts), "new_tokens": a.tokens, "batch_size": a.batch_size, "model": lm.spec,
           "torch_threads": torch.get_num_threads(), "rows": rows,
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    emit(out, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
