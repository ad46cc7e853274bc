"""Sampled-generation throughput next to plain forward-pass throughput, same machine and batch.

    python -m trustedit.benchmarks.generation_throughput [--prompts 16] [--k 25] [--max-new-tokens 20]

Data come from $TRUSTEDIT_DATA_DIR (the first RealToxicityPrompts of the toxic-first set).

* **generation**: :func:`trustedit.prompts.sample_continuations` exactly as the RTP protocol runs
  it (``prompts_per_batch`` prompts x k samples per call, nucleus p = 0.9, KV cache); throughput =
  generated tokens / second.
* **forward**: one teacher-forced forward pass (no cache, no sampling) over the *same* sequences
  (each prompt followed by its generated continuation), in the same batches; throughput = the
  continuation tokens it scores / second. This is the cost of computing those tokens' logits
  once, with full parallelism over positions, i.e. what generation would cost without its
  step-by-step decoding loop.

Prints a Markdown table (and ``--json``) with the ratio generation / forward.
"""

from __future__ import annotations

import argparse
import json
import time

from trustedit.benchmarks.erase_timing import machine


def main(argv=None):
    ap = argparse.ArgumentParser(description="sampled generation vs forward-pass throughput")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=25)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--prompts-per-batch", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from trustedit.data.toxicity import load_rtp, select_rtp
    from trustedit.suites.rtp import plain_format
    from trustedit.models import load_model
    from trustedit.prompts import pad_right, sample_continuations

    lm = load_model(args.model, args.device, "auto")
    tok, model = lm.tokenizer, lm.model
    fmt = plain_format()
    prompts = [fmt.prompt_ids(tok, p.text) for p in select_rtp(load_rtp(), args.prompts, 0, "toxic-first")]
    sync = torch.cuda.synchronize if lm.device.startswith("cuda") else (lambda: None)

    sample_continuations(model, tok, prompts[: args.prompts_per_batch], 2, 4, prompts_per_batch=args.prompts_per_batch)  # warm-up
    sync()
    t = time.perf_counter()
    _, ids = sample_continuations(model, tok, prompts, args.k, args.max_new_tokens,
                                  prompts_per_batch=args.prompts_per_batch)
    sync()
    gen_s = time.perf_counter() - t
    gen_tokens = sum(len(c) for row in ids for c in row)

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    seqs = [(p, c) for p, row in zip(prompts, ids) for c in row]
    rows = args.prompts_per_batch * args.k
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(seqs), rows):
            chunk = seqs[s: s + rows]
            x, m = pad_right([p + c for p, c in chunk], pad)
            model(input_ids=x.to(lm.device), attention_mask=m.to(lm.device), use_cache=False)
    sync()
    fwd_s = time.perf_counter() - t
    res = {"machine": machine(), "device": lm.device, "model": lm.spec, "prompts": len(prompts), "k": args.k,
           "max_new_tokens": args.max_new_tokens, "rows_per_batch": rows, "generated_tokens": gen_tokens,
           "generation_s": round(gen_s, 2), "generation_tok_s": round(gen_tokens / gen_s, 1),
           "forward_s": round(fwd_s, 2), "forward_tok_s": round(gen_tokens / fwd_s, 1),
           "ratio": round((gen_tokens / gen_s) / (gen_tokens / fwd_s), 3)}
    print(f"machine: {res['machine']}; device {res['device']}")
    print(f"{len(prompts)} prompts x k={args.k}, <= {args.max_new_tokens} new tokens, {rows} sequences per batch\n")
    print("| pass | seconds | continuation tokens/s |\n|---|---|---|")
    print(f"| sampled generation (KV cache, top-p 0.9) | {gen_s:.1f} | {res['generation_tok_s']} |")
    print(f"| plain forward over the same sequences | {fwd_s:.1f} | {res['forward_tok_s']} |")
    print(f"\ngeneration / forward throughput: {100 * res['ratio']:.0f} %")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
