"""The scope gate's cost at inference: extra seconds per 1,000 prompts.

    python -m trustedit.benchmarks.scope_gate_cost [--n 1000] [--repeats 3]

Greedy answers (the sanitation suite's settings: 16 new tokens, stop at a sentence end) to ``--n``
prompts built from the KnowEdit Sanitation test questions (cycled), by the base model and by the
base model with a sanitation-scope gate (MiniLM and hidden-state features) whose threshold is set
above every score, so that every prompt is out of scope and the answers are the base model's: the
difference in time is the gate's own cost (hooks, features, scoring), not the shorter refusals.
Runs alternate (base, gate, base, gate, ...) and the median of ``--repeats`` is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)

    import torch

    from trustedit.data.sanitation import load
    from trustedit.models import load_model
    from trustedit.privacy.scope import ScopeConfig, fit
    from trustedit.prompts import generate
    from trustedit.suites.sanitation import SanitationOptions, TrainPairs, pairs

    lm = load_model()
    data = load(None, hub=False)
    p = pairs(lm.tokenizer, data)
    train = TrainPairs(p["train_f"], p["train_r"], forget_answers=[x.answer for x in data.train_forget])
    test = p["test_f"] + p["test_r"]
    prompts = [test[i % len(test)].prompt for i in range(args.n)]
    o = SanitationOptions()

    def answer():
        t0 = time.perf_counter()
        out = generate(lm.model, lm.tokenizer, prompts, o.max_new_tokens, args.batch_size, desc="answers",
                       stop_strings=tuple(o.answer_stop))
        return time.perf_counter() - t0, out[0]

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.n} prompts, batch size "
          f"{args.batch_size}", flush=True)
    for feat, clf in (("minilm", "knn"), ("hidden", "logreg")):
        patch = fit(lm, train, ScopeConfig(features=feat, classifier=clf))
        patch.gate.threshold = float("inf")  # every prompt out of scope: the base model's answers
        base_t, gate_t = [], []
        for _ in range(args.repeats):
            t, ref = answer()
            base_t.append(t)
            patch.apply(lm.model)
            try:
                t, got = answer()
            finally:
                patch.revert(lm.model)
            gate_t.append(t)
            assert got == ref, "out of scope, the gated answers must be the base model's"
        b, g = statistics.median(base_t), statistics.median(gate_t)
        per = 1000 / args.n
        print(f"{feat}+{clf}: base {b * per:.1f} s / 1000 prompts, gated {g * per:.1f} s / 1000 prompts, extra "
              f"{(g - b) * per:+.1f} s / 1000 prompts ({100 * (g - b) / b:+.1f} %); gate's own time "
              f"{patch.gate.stats['seconds'] / args.repeats * per:.1f} s / 1000 prompts; runs base "
              f"{[round(x, 1) for x in base_t]} gated {[round(x, 1) for x in gate_t]}", flush=True)


if __name__ == "__main__":
    main()
