"""What ProFS's subspace is made of on the embedded model, and what projecting it out costs, for
each way of pooling and centring the pair embeddings (RESULTS §15b).

    python -m trustedit.benchmarks.profs_centring [--pairs 200] [--json OUT]

For each variant: the largest coordinates of the top direction at one layer (outlier dimensions of
the residual stream show up there), and the perplexity of held-out text (40 RTP prompt texts,
toxic-first ranks 300-339, none of them reported by the detox table) under the model with the
subspace (k, layers 0.42 of depth to the top) projected out of the MLP value weights.
"""

from __future__ import annotations

import argparse
import json
import math


def main(argv=None):
    ap = argparse.ArgumentParser(description="ProFS pooling and centring on the embedded model")
    ap.add_argument("--model", default=None)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--layer", type=int, default=20, help="the layer whose top direction is shown")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from trustedit import arch
    from trustedit.bias.dama import projection_delta, resolve_layers
    from trustedit.data.toxicity import load_rtp, select_rtp
    from trustedit.models import load_model
    from trustedit.patch import Patch
    from trustedit.safety.profs import sentence_embeddings, toxic_basis, training_pairs

    lm = load_model(args.model, "cpu")
    model, tok = lm.model, lm.tokenizer
    layers = resolve_layers(0.42, -1, arch.num_layers(model))
    tox, clean, _ = training_pairs(args.pairs, 0)
    texts = [p.text for p in select_rtp(load_rtp(), 340, 0)[300:340]]
    enc = [tok(t)["input_ids"] for t in texts]

    def ppl():
        tot = n = 0
        with torch.inference_mode():
            for ids in enc:
                x = torch.tensor([ids])
                tot += float(model(x, labels=x).loss) * (len(ids) - 1)
                n += len(ids) - 1
        return math.exp(tot / n)

    spec = arch.arch_for(model)
    params = dict(model.named_parameters())
    rows = [{"variant": "base model", "ppl": round(ppl(), 2)}]
    emb = {}
    for first in (True, False):
        emb[first] = (sentence_embeddings(lm, tox, layers, first_position=first),
                      sentence_embeddings(lm, clean, layers, first_position=first))
    mu = emb[False][1][args.layer].mean(0)
    top = mu.abs().topk(5)
    variants = [("mean over every position (reference code), mean removed", True, 1),
                ("first position left out, mean removed (the paper's centring)", False, 1)]
    variants += [(f"first position left out, mean + {c - 1} principal direction(s) removed", False, c) for c in (2, 3, 5, 10)]
    for label, first, c in variants:
        Xt, Xc = emb[first]
        deltas = {}
        for L in layers:
            Q, rec = toxic_basis(Xt[L], Xc[L], args.rank, True, c)
            name = arch.layer_path(model, L, spec.down) + ".weight"
            deltas[name] = projection_delta(params[name], Q, spec.conv1d)
            if L == args.layer:
                q = Q[:, 0].abs().topk(3)
                coords = [(int(i), round(float(v), 2)) for i, v in zip(q.indices, q.values)]
        patch = Patch("profs", deltas)
        patch.apply(model)
        try:
            rows.append({"variant": label, "centre_directions": c, "top_coordinates": coords, "ppl": round(ppl(), 2)})
        finally:
            patch.revert(model)
    print(f"mean non-toxic embedding at layer {args.layer}, first position left out: largest coordinates "
          f"{[(int(i), round(float(v), 1)) for i, v in zip(top.indices, top.values)]}, norm {float(mu.norm()):.1f}\n")
    print(f"| variant (k = {args.rank}, layers {layers[0]}-{layers[-1]}, {args.pairs} pairs) | top direction at layer "
          f"{args.layer}: largest coordinates | ppl of 40 held-out RTP texts |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r.get('top_coordinates', '–')} | {r['ppl']} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
