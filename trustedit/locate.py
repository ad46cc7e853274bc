"""Causal tracing: where in the network a model recalls a fact (Meng, Bau, Andonian & Belinkov,
"Locating and Editing Factual Associations in GPT", NeurIPS 2022, §2.1).

Written from the paper, in three runs per prompt:

1. *clean run*: the prompt as is; every hidden state is kept, and ``p_clean`` is the probability
   of the traced answer at the last position (by default the model's own greedy answer, the
   prediction the paper traces; ``answer=`` traces a given answer's first token instead);
2. *corrupted run*: Gaussian noise ``ε ~ N(0, ν²)`` is added to the input embeddings of every
   subject token, with ``ν`` three times the standard deviation of the embeddings (the paper's
   setting); ``p_corrupt`` is the answer's probability, averaged over ``samples`` noise draws;
3. *corrupted-with-restoration run*: as the corrupted run, but one state is put back to its clean
   value: for ``kind="hidden"`` the residual stream after decoder layer ``l`` at token ``t``; for
   ``kind="mlp"`` / ``"attn"`` the MLP / attention output at token ``t`` in a window of ``window``
   layers around ``l`` (``l - window//2 .. l + ceil(window/2) - 1``, clipped at both ends, as the
   paper's Figure 1 and code do). ``scores[l][t]`` is the answer's probability, averaged over the
   same noise draws; the *indirect effect* is ``scores - p_corrupt``.

All ``samples × positions`` rows of one layer run in one batched forward pass (chunked above
``max_rows``), under ``torch.no_grad``, with forward hooks that are always removed (also on
error). Positions before the first subject token are not run: the corrupted run is clean there
(causal attention), so restoring them gives ``p_corrupt`` exactly, which is what is recorded. The
noise draws come from a seeded ``torch.Generator``; the global RNG is not touched.

``best_layer`` is, as in the paper, the layer with the largest indirect effect at the *last*
subject token; ``peak`` is the (layer, position) of the largest effect over all subject tokens
(in small models the fact can sit on an earlier subject token: SmolLM2-135M recalls
"Eiffel Tower → Paris" at "iffel" in its first MLPs, barely at " Tower").
:func:`auto_layer` averages the indirect effect at the last subject token (or, ``at="subject"``,
the largest over the subject's tokens) over a few requests and returns the layer where it
peaks, for editors run with ``--layer auto``.

Deviations, documented:

* ``ν`` defaults to 3 × the standard deviation of the embedding module's outputs over the whole
  vocabulary (so that models which scale their embeddings inside that module, such as Gemma 3,
  are covered); the paper takes the standard deviation over the embeddings of the subjects of
  its known-facts dataset. Pass ``noise=`` to set ``ν`` directly.
* The same ``samples`` noise draws are reused for every layer and position (the reference code
  reseeds for every call, so it does the same), which makes the cells comparable.
* The embedding layer itself is not a row of the "hidden" grid (rows are decoder layers
  ``0 .. L-1``); restoring the corrupted subject's input embedding is the same as restoring the
  residual stream before layer 0.
* The prompt is tokenised with BOS when the tokenizer adds one by default (as the editors do),
  and the BOS token is a position of the grid like any other.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager

KINDS = ("hidden", "mlp", "attn")


# ---- which modules ------------------------------------------------------------------------------


def _role(spec, kind: str) -> str | None:
    """The module, relative to a decoder layer, whose output ``kind`` restores (None: the layer)."""
    if kind == "hidden":
        return None
    if kind == "mlp":
        return spec.mlp
    if kind == "attn":
        return spec.o.rsplit(".", 1)[0]  # the attention block holding the output projection
    raise ValueError(f"unknown trace kind {kind!r} (known: {', '.join(KINDS)})")


def module_names(model, kind: str) -> list[str]:
    """Dotted names (as in ``named_modules``) of the module ``kind`` restores, one per layer."""
    from trustedit import arch

    spec = arch.arch_for(model)
    role = _role(spec, kind)
    n = arch.num_layers(model)
    return [f"{spec.layers}.{i}" if role is None else arch.layer_path(model, i, role) for i in range(n)]


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    """The layers restored together for centre ``layer``: ``layer - window//2`` up to (not
    including) ``layer + ceil(window/2)``, clipped to ``[0, n_layers)``."""
    window = max(1, int(window))
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


# ---- tokens -------------------------------------------------------------------------------------


def _prompt_ids(tok, prompt: str, bos: bool) -> list[int]:
    pre = [tok.bos_token_id] if bos and tok.bos_token_id is not None else []
    return pre + list(tok(prompt, add_special_tokens=False)["input_ids"])


def subject_range(tokenizer, text: str, subject: str, bos: bool = False) -> tuple[int, int]:
    """``(first, last)`` indices (after an optional BOS) of the tokens that overlap the characters
    of ``subject``'s first appearance in ``text``, found from character offsets."""
    i = text.find(subject)
    if i < 0:
        raise ValueError(f"subject {subject!r} not in {text!r}")
    end = i + len(subject)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    hit = [j for j, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > i]
    if not hit:
        raise ValueError(f"no token covers {subject!r} in {text!r}")
    shift = 1 if bos and tokenizer.bos_token_id is not None else 0
    return hit[0] + shift, hit[-1] + shift


# ---- hooks --------------------------------------------------------------------------------------


def _hidden(out):
    return out[0] if isinstance(out, tuple) else out


def _replace(out, h):
    return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h


@contextmanager
def _hooked(pairs):
    """Within the block each ``(module, hook)`` is a forward hook; all are removed on exit."""
    handles = []
    try:
        for m, fn in pairs:
            handles.append(m.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _eval(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _noise_hook(noise, first: int, last: int, sample_of_row):
    """Adds ``noise[sample_of_row[r]]`` to the embeddings of tokens ``first..last`` of row ``r``."""

    def hook(m, inputs, out):
        h = _hidden(out)
        eps = noise.to(device=h.device, dtype=h.dtype)[sample_of_row.to(h.device)]
        h = h.clone()
        h[:, first:last + 1] = h[:, first:last + 1] + eps
        return _replace(out, h)

    return hook


def _restore_hook(clean, pos_of_row):
    """Puts the clean state ``clean[t]`` back at position ``t = pos_of_row[r]`` of each row ``r``."""

    import torch

    def hook(m, inputs, out):
        h = _hidden(out)
        rows = torch.arange(h.shape[0], device=h.device)
        t = pos_of_row.to(h.device)
        h = h.clone()
        h[rows, t] = clean.to(device=h.device, dtype=h.dtype)[t]
        return _replace(out, h)

    return hook


# ---- noise --------------------------------------------------------------------------------------


def embedding_std(lm, chunk: int = 4096) -> float:
    """Standard deviation of the embedding module's outputs over every token of the vocabulary."""
    import torch

    from trustedit import arch

    model = lm.model
    emb = arch.get_module(model, arch.arch_for(model).embed)
    n = emb.weight.shape[0]
    dev = emb.weight.device
    s = s2 = 0.0
    count = 0
    with torch.no_grad():
        for a in range(0, n, chunk):
            x = emb(torch.arange(a, min(n, a + chunk), device=dev)).double()
            s += x.sum().item()
            s2 += (x * x).sum().item()
            count += x.numel()
    mean = s / count
    return math.sqrt(max(0.0, s2 / count - mean * mean))


def default_noise(lm) -> float:
    """The paper's noise level: 3 × the embeddings' standard deviation."""
    return 3.0 * embedding_std(lm)


# ---- tracing ------------------------------------------------------------------------------------


def _p_answer(model, ids, answer_id: int):
    """p(answer) at the last position of each row of ``ids`` (all rows the same length)."""
    import torch

    return torch.softmax(_last_logits(model, ids), -1)[:, answer_id].double().cpu()


def causal_trace(lm, request, kind: str = "hidden", window: int = 10, samples: int = 10, noise: float | None = None,
                 seed: int = 0, answer: str | None = None, max_rows: int = 512) -> dict:
    """Causal trace of ``request.prompt`` (see the module docstring): ``scores[l][t]`` is
    p(answer) at the last position when the clean state of ``kind`` at layer ``l`` (a window of
    ``window`` layers for "mlp" / "attn") and token ``t`` is restored into the run whose subject
    embeddings are corrupted, averaged over ``samples`` noise draws of std ``noise``."""
    import torch

    from trustedit import arch
    from trustedit.methods.requests import encode_request, prompt_bos

    if kind not in KINDS:
        raise ValueError(f"unknown trace kind {kind!r} (known: {', '.join(KINDS)})")
    if samples < 1:
        raise ValueError("samples must be at least 1")
    model, tok = lm.model, lm.tokenizer
    spec = arch.arch_for(model)
    bos = prompt_bos(tok)
    ids_list = _prompt_ids(tok, request.prompt, bos)
    first, last = subject_range(tok, request.prompt, request.subject, bos)
    n_layers = arch.num_layers(model)
    T = len(ids_list)
    kind_window = 1 if kind == "hidden" else max(1, int(window))
    mods = dict(model.named_modules())
    names = module_names(model, kind)
    targets = [mods[n] for n in names]
    embed = mods[spec.embed]
    nu = float(default_noise(lm) if noise is None else noise)

    dev = embed.weight.device
    ids = torch.tensor([ids_list], dtype=torch.long, device=dev)
    with torch.no_grad(), _eval(model):
        # 1. the clean run: every restorable state, and the answer
        clean = {}
        hooks = [(m, (lambda m_, i_, o_, k=k: clean.__setitem__(k, _hidden(o_)[0].detach().clone())))
                 for k, m in enumerate(targets)]
        with _hooked(hooks):
            logits = _last_logits(model, ids)
        probs = torch.softmax(logits[0], -1)
        if answer is None:
            answer_id = int(probs.argmax())
        else:
            tgt = encode_request(tok, request.prompt, answer, bos)[1]
            if not tgt:
                raise ValueError(f"answer {answer!r} has no tokens")
            answer_id = int(tgt[0])
        p_clean = float(probs[answer_id])

        # 2. the corrupted run
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        d = embed.weight.shape[1]
        eps = torch.randn((samples, last - first + 1, d), generator=g, dtype=torch.float32) * nu
        rows = ids.expand(samples, T)
        with _hooked([(embed, _noise_hook(eps, first, last, torch.arange(samples)))]):
            p_corrupt = float(_p_answer(model, rows, answer_id).mean())

        # 3. corrupted with restoration: one forward per layer (chunked over positions)
        per_chunk = max(1, max_rows // samples)
        scores = []
        for layer in range(n_layers):
            restored = window_layers(layer, kind_window, n_layers)
            # before the subject the corrupted run is clean: restoring there changes nothing
            row_scores = [p_corrupt] * first
            for a in range(first, T, per_chunk):
                pos = torch.arange(a, min(T, a + per_chunk))
                P = len(pos)
                sample_of_row = torch.arange(samples).repeat_interleave(P)
                pos_of_row = pos.repeat(samples)
                hooks = [(embed, _noise_hook(eps, first, last, sample_of_row))]
                hooks += [(targets[j], _restore_hook(clean[j], pos_of_row)) for j in restored]
                with _hooked(hooks):
                    p = _p_answer(model, ids.expand(samples * P, T), answer_id)
                row_scores.extend(p.view(samples, P).mean(0).tolist())
            scores.append(row_scores)

    effect = [[s - p_corrupt for s in row] for row in scores]
    best = max(range(n_layers), key=lambda i: effect[i][last])
    peak = max(((i, t) for i in range(n_layers) for t in range(first, last + 1)), key=lambda c: effect[c[0]][c[1]])
    return {
        "kind": kind,
        "window": kind_window,
        "samples": int(samples),
        "noise": nu,
        "seed": int(seed),
        "tokens": [tok.decode([i]) for i in ids_list],
        "subject_range": [first, last],
        "answer": tok.decode([answer_id]),
        "answer_id": answer_id,
        "p_clean": p_clean,
        "p_corrupt": p_corrupt,
        "scores": scores,
        "indirect_effect": effect,
        "best_layer": best,
        "peak": {"layer": peak[0], "position": peak[1], "effect": effect[peak[0]][peak[1]]},
        "model": lm.fingerprint,
    }


def _last_logits(model, ids):
    """Float32 logits at the last position of each row of ``ids``."""
    import torch

    from trustedit.methods.rome import logits_at as rome_logits_at

    b = ids.shape[0]
    return rome_logits_at(model, ids, torch.ones_like(ids), torch.arange(b, device=ids.device),
                          torch.full((b,), ids.shape[1] - 1, device=ids.device))


def auto_layer(lm, requests, kind: str = "mlp", limit: int = 5, at: str = "last", **kw) -> tuple[int, dict]:
    """``(layer, record)``: the layer where the indirect effect of ``kind`` at the last subject
    token (the token ROME edits at; ``at="subject"``: the largest over the subject's tokens),
    averaged over the first ``limit`` requests, is largest. ``kw`` goes to :func:`causal_trace`
    (the noise level is computed once for all requests)."""
    if at not in ("last", "subject"):
        raise ValueError(f"at must be 'last' or 'subject', not {at!r}")
    requests = list(requests)[:max(1, int(limit))]
    if not requests:
        raise ValueError("auto_layer needs at least one request")
    if kw.get("noise") is None:
        kw["noise"] = default_noise(lm)
    per, traced = None, []
    for r in requests:
        res = causal_trace(lm, r, kind=kind, **kw)
        a, b = res["subject_range"]
        col = [row[b] if at == "last" else max(row[a:b + 1]) for row in res["indirect_effect"]]
        per = col if per is None else [a + b for a, b in zip(per, col)]
        traced.append({"id": r.id, "prompt": r.prompt, "subject": r.subject, "answer": res["answer"],
                       "p_clean": res["p_clean"], "p_corrupt": res["p_corrupt"], "best_layer": res["best_layer"], "peak": res["peak"]})
    per = [x / len(requests) for x in per]
    layer = max(range(len(per)), key=per.__getitem__)
    return layer, {"kind": kind, "at": at, "window": res["window"], "samples": res["samples"], "noise": res["noise"],
                   "requests": traced, "per_layer": per, "layer": layer}


# ---- pictures -----------------------------------------------------------------------------------

_COLOURS = {"hidden": (84, 39, 143), "mlp": (0, 109, 44), "attn": (165, 15, 21)}
_NAMES = {"hidden": "hidden state", "mlp": "MLP", "attn": "Attn"}


def _esc(s: str) -> str:
    from xml.sax.saxutils import escape

    s = "".join(c if c in "\t\n\r" or ord(c) >= 32 else "\ufffd" for c in str(s))
    s = "".join(c for c in s if not (0xD800 <= ord(c) <= 0xDFFF) and c not in "\ufffe\uffff")
    return escape(s.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r"), {'"': "&quot;"})


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _panel(result, x0: float, y0: float, gid: str, title: str | None, label_w: float):
    """SVG elements of one heat map with its colour bar; returns ``(elements, width, height)``."""
    kind = result["kind"]
    scores = result["scores"]
    L, T = len(scores), len(result["tokens"])
    first, last = result["subject_range"]
    vmin = result["p_corrupt"]
    vmax = max([max(r) for r in scores] + [vmin])
    span = (vmax - vmin) or 1.0
    cw = max(8.0, min(24.0, 480.0 / max(L, 1)))
    ch = 18.0
    r0, g0, b0 = _COLOURS.get(kind, (0, 0, 0))

    def colour(v):
        f = min(1.0, max(0.0, (v - vmin) / span))
        return "#%02x%02x%02x" % tuple(round(255 + (c - 255) * f) for c in (r0, g0, b0))

    if title is None:
        what = _NAMES.get(kind, kind) + (f" (window {result['window']})" if kind != "hidden" else "")
        title = f"Restoring {what}: p({result['answer'].strip() or result['answer']!r})"
    sub = f"p_clean={_fmt(result['p_clean'])}  p_corrupt={_fmt(result['p_corrupt'])}  max={_fmt(vmax)}"
    gx = x0 + label_w
    gy = y0 + 44
    out = [f'<text x="{x0 + 4}" y="{y0 + 16}" font-size="14" font-weight="bold">{_esc(title)}</text>',
           f'<text x="{x0 + 4}" y="{y0 + 34}" font-size="11" fill="#444">{_esc(sub)}</text>']
    for t, token in enumerate(result["tokens"]):
        mark = "*" if first <= t <= last else ""
        y = gy + t * ch
        out.append(f'<text x="{gx - 6}" y="{y + ch * 0.7:.1f}" font-size="12" text-anchor="end" '
                   f'xml:space="preserve">{_esc(token + mark)}</text>')
        for layer in range(L):
            v = scores[layer][t]
            out.append(f'<rect x="{gx + layer * cw:.1f}" y="{y:.1f}" width="{cw:.1f}" height="{ch:.1f}" '
                       f'fill="{colour(v)}"><title>layer {layer}, {_esc(token)}: {v:.4f}</title></rect>')
    gh = T * ch
    out.append(f'<rect x="{gx}" y="{gy}" width="{L * cw:.1f}" height="{gh:.1f}" fill="none" stroke="#888"/>')
    step = 1 if L <= 16 else 5 if L <= 80 else 10
    for layer in range(0, L, step):
        out.append(f'<text x="{gx + (layer + 0.5) * cw:.1f}" y="{gy + gh + 14:.1f}" font-size="10" '
                   f'text-anchor="middle">{layer}</text>')
    out.append(f'<text x="{gx + L * cw / 2:.1f}" y="{gy + gh + 30:.1f}" font-size="12" text-anchor="middle">'
               f'layer ({_esc(kind)})</text>')
    # colour bar
    bx = gx + L * cw + 16
    out.append(f'<defs><linearGradient id="{gid}" x1="0" y1="1" x2="0" y2="0">'
               f'<stop offset="0" stop-color="{colour(vmin)}"/><stop offset="1" stop-color="{colour(vmax)}"/>'
               f'</linearGradient></defs>')
    out.append(f'<rect x="{bx:.1f}" y="{gy}" width="12" height="{gh:.1f}" fill="url(#{gid})" stroke="#888"/>')
    out.append(f'<text x="{bx + 16:.1f}" y="{gy + 10}" font-size="10">{_fmt(vmax)}</text>')
    out.append(f'<text x="{bx + 16:.1f}" y="{gy + gh:.1f}" font-size="10">{_fmt(vmin)}</text>')
    out.append(f'<text x="{bx + 16:.1f}" y="{gy + gh / 2:.1f}" font-size="10">p</text>')
    width = label_w + L * cw + 16 + 12 + 52
    height = 44 + gh + 40
    return out, width, height


def _label_width(results) -> float:
    longest = max((len(t) + 1 for r in results for t in r["tokens"]), default=4)
    return 12 + 7.5 * min(longest, 40)


def _write(path, parts, width, height):
    import tempfile

    path = os.fspath(path)
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Arial, sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(parts) + "\n</svg>\n")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".trace-", suffix=".svg.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def trace_svg(result, path, title: str | None = None):
    """Write ``result`` (from :func:`causal_trace`) as an SVG heat map: layers on x, tokens on y
    (subject tokens marked ``*``), colour from ``p_corrupt`` to the largest restored p."""
    parts, w, h = _panel(result, 8, 8, "cbar0", title, _label_width([result]))
    return _write(path, parts, w + 16, h + 16)


def trace_many_svg(results, path, title: str | None = None):
    """Several traces (e.g. hidden, mlp, attn of one prompt) side by side in one SVG."""
    results = list(results)
    if not results:
        raise ValueError("no trace to draw")
    lw = _label_width(results)
    parts, x, hmax = [], 8.0, 0.0
    top = 28.0 if title else 8.0
    if title:
        parts.append(f'<text x="12" y="20" font-size="15" font-weight="bold">{_esc(title)}</text>')
    for i, r in enumerate(results):
        p, w, h = _panel(r, x, top, f"cbar{i}", None, lw)
        parts.extend(p)
        x += w + 12
        hmax = max(hmax, h)
    return _write(path, parts, x, top + hmax + 8)
