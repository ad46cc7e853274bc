"""Fine-tuning one MLP down-projection to write edit requests: the engine of the FT-M and FT-L editors
(:mod:`trustedit.methods.ft_m`, :mod:`trustedit.methods.ft_l`).

Each request becomes ``(prompt_ids, target_ids)`` by :func:`~trustedit.methods.requests.encode_request`
(BOS as :func:`~trustedit.methods.requests.prompt_bos`; no EOS after the target: KnowEdit scores
the target's own tokens). Only ``layers[L].<down projection>.weight`` changes.

Objectives (the loss of one request is the mean over its target tokens; a batch's loss is the mean
over its requests, as in EasyEdit and LocFT):

* ``target`` (FT-M): teacher forcing on ``prompt + target[:-1]``; target token ``j`` is read at
  the position before it, the prompt is masked.
* ``prompt_last`` (FT-L; EasyEdit's ``objective_optimization="prompt_last"``): the input is the
  prompt alone and *every* target token's log-probability is read from the one distribution at the
  last prompt position. For a one-token target this is the teacher-forced NLL; for a longer target it
  is a bag-of-tokens objective that raises all of the target's tokens as candidates for the next
  token and never trains the continuation. It is kept as EasyEdit (and ROME's FT-L baseline) have it,
  because FT-L's published numbers come from it; FT-M is the teacher-forced alternative.

Schedules of one fit:

* ``single`` (one request): up to ``steps`` AdamW steps on it.
* ``depth-first`` (EasyEdit's sequential editing): each request alone, all its steps, then the next,
  each on the model with the earlier edits in place (a fresh optimiser per request, as EasyEdit
  creates one per edit).
* ``breadth-first`` (LocFT-BF of Yang et al. 2025, "Fine-tuning Done Right in Model Editing",
  arXiv 2509.22072; their code ICT-STAR/LocFT): ``epochs`` passes, each visiting every request once
  in seeded shuffled mini-batches of ``batch_size`` requests (grouped by length to cut padding), one
  optimiser for the whole fit, constant learning rate. As in their code, a mini-batch whose requests
  are all below ``nll_stop`` is not stepped on, and the fit stops after an epoch in which every
  request was below it (each value measured in its batch's forward pass, before that batch's update).

Every step stops early once every request's mean target NLL is below ``nll_stop``, measured in the
step's own forward pass (then no update is made). EasyEdit and LocFT use 1e-2 on the loss; a
threshold of 0.05 (the ROME value optimisation's) already puts the geometric-mean token probability
above 0.95 and saves steps.

Speed: nothing below layer L depends on the trained weight, so the hidden states entering layer L
are computed once (no grad) and cached; during training layers ``0..L-1`` are replaced by stubs that
return the cached states (the embeddings, rotary tables and masks are still built by the model
itself, which is what keeps this exact for every architecture), and the vocabulary projection runs
only at the positions a loss reads. The model is kept in eval mode (no dropout), as in EasyEdit.

The result: a dense reversible patch of the weight's change (the model is left as it was), with the
manifest ``training`` = ``{layer, parameters, objective, schedule, steps, requests, per_request:
[{id, converged, target_prob, final_nll, ...}], converged, seconds, ...}``; ``target_prob`` is the
mean teacher-forced probability of the target's tokens after training, ``final_nll`` their mean NLL,
``converged`` is ``target_prob >= 0.5``.
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

from trustedit.methods.base import layer_index, length_grouped_batches, set_seed

OBJECTIVES = ("target", "prompt_last")
SCHEDULES = ("breadth-first", "depth-first")
EVAL_BATCH = 32  # rows per no-grad pass (the cache and the final scores)


@dataclass
class Row:
    """One request as token ids, with the hidden states entering the tuned layer at every position of
    ``prompt + target[:-1]`` (``h``: ``n x d``; None when the tuned layer is the first)."""

    id: str
    prompt: list
    target: list
    h: object = None

    def seq(self, objective: str) -> list:
        return self.prompt + self.target[:-1] if objective == "target" else list(self.prompt)


class _Stop(Exception):
    """Ends a forward pass once the hidden states below the tuned layer are captured."""


@functools.lru_cache(maxsize=None)
def _stub_class():
    import torch

    class CachedLayers(torch.nn.Module):
        """Stands in for a decoder layer below the tuned one: returns the cached hidden states of the
        current batch (the real layers' output), in the real layer's output form."""

        def __init__(self, holder: dict):
            super().__init__()
            self.holder = holder

        def forward(self, hidden_states, *args, **kwargs):
            h, n = self.holder["h"], self.holder["tuple"]
            return (h,) + (None,) * (n - 1) if n else h

    return CachedLayers


@dataclass
class Batch:
    """Right-padded inputs of some rows, and where each target token's log-probability is read."""

    ids: object
    mask: object
    h: object  # cached hidden states entering the tuned layer (None: run the whole model)
    pos_b: object  # the positions whose logits are computed
    pos_t: object
    tok_pos: object  # for each target token: index into the computed positions, its id, its row
    tok_id: object
    tok_row: object
    counts: object  # target tokens per row
    first: object  # for each target token: the computed position of its row's last prompt token


@contextmanager
def frozen_below(model, L: int, input_ids, attention_mask):
    """Within the block, decoder layers ``0..L-1`` are stubs that return the hidden states they
    produced on this batch (computed once here, without gradient): an optimisation that changes
    nothing below layer ``L`` (ROME's and MEMIT's value steps) runs only the layers from ``L`` up on
    every step. Only for forward passes on exactly this ``input_ids`` / ``attention_mask``."""
    import torch

    from trustedit import arch

    if L <= 0:
        yield
        return
    layers = arch.layers(model)
    holder, got = {"h": None, "tuple": 0}, {}

    def hook(module, inputs, out):
        got["h"] = (out[0] if isinstance(out, tuple) else out).detach()
        holder["tuple"] = len(out) if isinstance(out, tuple) else 0
        raise _Stop

    handle = layers[L - 1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    holder["h"] = got["h"]
    stub = _stub_class()
    saved = [layers[i] for i in range(L)]
    try:
        for i in range(L):
            layers[i] = stub(holder)
        yield
    finally:
        for i, m in enumerate(saved):
            layers[i] = m


class Runner:
    """Runs the model on rows from the tuned layer ``L`` up (see the module docstring)."""

    def __init__(self, model, L: int, pad_id: int):
        import torch

        from trustedit import arch

        self.model, self.L, self.pad = model, L, pad_id
        self.device = next(model.parameters()).device
        self.layers = arch.layers(model)
        self.holder = {"h": None, "tuple": 0}
        self.dtype = torch.float32

    # ---- the cache -------------------------------------------------------------------------
    def cache(self, rows: list[Row]) -> None:
        """Fill ``row.h`` with the hidden states leaving layer ``L-1`` on ``prompt + target[:-1]``."""
        import torch

        from trustedit.prompts import pad_right

        if self.L == 0:
            return
        got = {}

        def hook(module, inputs, out):
            got["h"] = out[0] if isinstance(out, tuple) else out
            self.holder["tuple"] = len(out) if isinstance(out, tuple) else 0
            raise _Stop

        handle = self.layers[self.L - 1].register_forward_hook(hook)
        try:
            for s in range(0, len(rows), EVAL_BATCH):
                chunk = rows[s:s + EVAL_BATCH]
                seqs = [r.seq("target") for r in chunk]
                ids, mask = pad_right(seqs, self.pad)
                try:
                    with torch.no_grad():
                        self.model.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                              use_cache=False)
                except _Stop:
                    pass
                for i, (r, seq) in enumerate(zip(chunk, seqs)):
                    r.h = got["h"][i, :len(seq)].detach().clone()
                self.dtype = got["h"].dtype
        finally:
            handle.remove()

    @contextmanager
    def upper_only(self):
        """Within the block, layers ``0..L-1`` are stubs returning ``holder["h"]``."""
        if self.L == 0:
            yield
            return
        stub = _stub_class()
        saved = [self.layers[i] for i in range(self.L)]
        try:
            for i in range(self.L):
                self.layers[i] = stub(self.holder)
            yield
        finally:
            for i, m in enumerate(saved):
                self.layers[i] = m

    # ---- batches ---------------------------------------------------------------------------
    def batch(self, rows: list[Row], objective: str) -> Batch:
        import torch

        from trustedit.prompts import pad_right

        seqs = [r.seq(objective) for r in rows]
        ids, mask = pad_right(seqs, self.pad)
        h = None
        if self.L:
            h = torch.zeros((len(rows), ids.shape[1], rows[0].h.shape[-1]), dtype=self.dtype, device=self.device)
            for i, (r, s) in enumerate(zip(rows, seqs)):
                h[i, :len(s)] = r.h[:len(s)]
        pos_b, pos_t, tok_pos, tok_id, tok_row, first = [], [], [], [], [], []
        for i, r in enumerate(rows):
            last, k0 = len(r.prompt) - 1, len(pos_b)
            if objective == "target":  # token j at the position before it
                for j, t in enumerate(r.target):
                    tok_pos.append(len(pos_b))
                    pos_b.append(i)
                    pos_t.append(last + j)
            else:  # every token at the last prompt position
                pos_b.append(i)
                pos_t.append(last)
                tok_pos += [k0] * len(r.target)
            tok_id += r.target
            tok_row += [i] * len(r.target)
            first += [k0] * len(r.target)
        d = self.device
        lt = lambda x: torch.tensor(x, dtype=torch.long, device=d)  # noqa: E731
        return Batch(ids.to(d), mask.to(d), h, lt(pos_b), lt(pos_t), lt(tok_pos), lt(tok_id), lt(tok_row),
                     torch.tensor([len(r.target) for r in rows], dtype=torch.float32, device=d), lt(first))

    def logp(self, b: Batch):
        """``(log_softmax at the computed positions, each target token's log-probability)``."""
        import torch

        self.holder["h"] = b.h
        from trustedit.methods.rome import logits_at

        logits = logits_at(self.model, b.ids, b.mask, b.pos_b, b.pos_t)
        lp = torch.log_softmax(logits, -1)
        return lp, lp[b.tok_pos, b.tok_id]

    def nll(self, b: Batch):
        """Each row's mean target-token NLL (a tensor with grad)."""
        import torch

        _, tok = self.logp(b)
        return torch.zeros(len(b.counts), device=self.device).index_add(0, b.tok_row, -tok) / b.counts

    def scores(self, rows: list[Row]) -> list[dict]:
        """Per row, teacher-forced: mean target-token NLL and probability; and the prompt-last NLL
        (every target token read at the last prompt position)."""
        import torch

        out = []
        with torch.no_grad():
            for s in range(0, len(rows), EVAL_BATCH):
                chunk = rows[s:s + EVAL_BATCH]
                b = self.batch(chunk, "target")
                lp, tok = self.logp(b)
                last = lp[b.first, b.tok_id]
                zero = torch.zeros(len(chunk), dtype=tok.dtype, device=self.device)
                nll, prob, lnll = (zero.index_add(0, b.tok_row, v) / b.counts for v in (-tok, tok.exp(), -last))
                out += [{"final_nll": round(nll[i].item(), 4), "target_prob": round(prob[i].item(), 4),
                         "prompt_last_nll": round(lnll[i].item(), 4)} for i in range(len(chunk))]
        return out


def _adamw(params, lr: float):
    """AdamW without weight decay; the fused kernel where the device has one (on a CPU it steps a
    Llama down-projection about 6x faster than the for-each one)."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _float_below(x: float, dtype) -> float:
    """The largest value of ``dtype`` that is <= ``x`` (so that a bound stored in ``dtype`` is never
    looser than ``x``)."""
    import torch

    t = torch.tensor(x, dtype=dtype)
    if t.item() > x:
        t = torch.nextafter(t, torch.tensor(0.0, dtype=dtype))
    return t.item()


def step_budget(n_requests: int, schedule: str, steps: int, epochs: int, batch_size: int) -> int:
    """The most optimiser steps :func:`run_schedule` can take on ``n_requests`` requests (AdaLoRA's
    ``total_step``): ``steps`` for one request, ``steps`` per request depth-first, one per
    mini-batch per epoch breadth-first."""
    if n_requests == 1:
        return steps
    if schedule == "depth-first":
        return steps * n_requests
    return epochs * math.ceil(n_requests / batch_size)


def run_schedule(rows: list, *, prepare, nll, params, method: str, lr: float, steps: int, epochs: int,
                 batch_size: int, schedule: str, nll_stop: float, seed: int, lengths: list,
                 regulariser=None, after_step=None, optimiser=None, desc: str | None = None) -> dict:
    """The schedules of the module docstring (``single`` for one row, else ``schedule``), for any
    trained ``params``: ``prepare(rows) -> batch`` builds the inputs of some rows, ``nll(batch)``
    gives each row's mean target NLL (a tensor with grad), ``lengths`` the rows' sequence lengths
    (to group mini-batches). The loss stepped on is the batch's mean NLL, plus ``regulariser()``
    when given (the early stop reads the NLL alone); ``after_step(global_step)`` runs after every
    optimiser step (before the next ``zero_grad``, so the gradients are still there), and
    ``optimiser(params, lr)`` makes the optimisers (default: AdamW without weight decay); ``desc``:
    a progress bar over the step budget (:func:`step_budget`). Returns the record ``{schedule,
    steps[, epochs]}``."""
    import torch
    from tqdm.auto import tqdm

    from trustedit.errors import NumericalError

    make = optimiser or _adamw
    sched = "single" if len(rows) == 1 else schedule
    if sched not in ("single",) + SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    record = {"schedule": sched, "steps": 0}
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=step_budget(len(rows), schedule, steps, epochs, batch_size), desc=desc, unit="step",
               leave=False, **({"disable": True} if desc is None else {}))

    def step(opt, nll_rows):
        loss = nll_rows.mean()
        if regulariser is not None:
            loss = loss + regulariser()
        if not torch.isfinite(loss):
            raise NumericalError(f"{method}: the loss became {loss.item()} at step {record['steps']}; "
                                 "lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(record["steps"])
        record["steps"] += 1
        bar.update(1)

    def until_stop(group: list):
        b = prepare(group)  # built once: the inputs do not change
        opt = make(params, lr)
        for _ in range(steps):
            v = nll(b)
            if bool((v.detach() < nll_stop).all()):
                break
            step(opt, v)

    try:
        if sched == "single":
            until_stop(rows)
        elif sched == "depth-first":
            for r in rows:
                until_stop([r])
        else:
            opt = make(params, lr)
            latest = [math.inf] * len(rows)
            record["epochs"] = 0
            for _ in range(epochs):
                record["epochs"] += 1
                for idx in length_grouped_batches(lengths, batch_size, g):
                    v = nll(prepare([rows[i] for i in idx]))
                    vals = v.detach().tolist()
                    for i, x in zip(idx, vals):
                        latest[i] = x
                    if all(x < nll_stop for x in vals):
                        continue
                    step(opt, v)
                if all(x < nll_stop for x in latest):
                    break
    finally:
        bar.close()
    return record


def request_rows(tok, requests) -> tuple[list, int]:
    """``(rows, pad id)``: each request's prompt and target token ids as a :class:`Row`."""
    from trustedit.methods.requests import encode_request, prompt_bos

    bos = prompt_bos(tok)
    rows = [Row(r.id or str(i), *encode_request(tok, r.prompt, r.target_new, bos)) for i, r in enumerate(requests)]
    return rows, (tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))


def edit(lm, train, *, method: str, layer, objective: str, lr: float, steps: int, epochs: int, batch_size: int,
         schedule: str, nll_stop: float, norm_constraint: float = 0.0, seed: int = 0):
    """Fine-tune the down-projection of ``layer`` on the requests of ``train`` (an
    :class:`~trustedit.methods.requests.EditRequest`, a list of them or a ``RequestBatch``; checked by
    :func:`~trustedit.methods.requests.as_requests`). ``norm_constraint`` > 0: after every step the
    weight is projected back into the L∞ ball of that radius around its original value (Zhu et al.
    2020), and the patch's delta is clamped to it in the weight's dtype (so the patch respects the
    bound exactly, rounding included). Returns a dense reversible :class:`~trustedit.patch.Patch`."""
    import torch

    from trustedit import arch
    from trustedit.hooks import only_trainable
    from trustedit.methods.requests import as_requests
    from trustedit.patch import dense_patch_from

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    requests = as_requests(train, method)
    set_seed(seed)
    t0 = time.time()
    model, tok = lm.model, lm.tokenizer
    L = layer_index(layer, arch.num_layers(model))
    name = arch.layer_path(model, L, arch.arch_for(model).down) + ".weight"
    W = dict(model.named_parameters())[name]
    before = {name: W.detach().clone()}
    rows, pad = request_rows(tok, requests)
    run = Runner(model, L, pad)
    run.cache(rows)
    box = None
    if norm_constraint:
        box = (before[name] - norm_constraint, before[name] + norm_constraint)
    was_training = model.training
    model.eval()
    try:
        with only_trainable(model, [name]), run.upper_only():

            def clamp(_step):
                if box is not None:
                    with torch.no_grad():
                        W.clamp_(min=box[0], max=box[1])

            record = run_schedule(rows, prepare=lambda group: run.batch(group, objective), nll=run.nll, params=[W],
                                  method=method, lr=lr, steps=steps, epochs=epochs, batch_size=batch_size,
                                  schedule=schedule, nll_stop=nll_stop, seed=seed,
                                  lengths=[len(r.seq(objective)) for r in rows], after_step=clamp)
            final = run.scores(rows)
    except BaseException:
        with torch.no_grad():
            W.copy_(before[name])
        raise
    finally:
        model.train(was_training)
    patch = dense_patch_from(model, before, method)
    per = []
    for r, s in zip(rows, final):
        e = {"id": r.id, "converged": s["target_prob"] >= 0.5, "target_prob": s["target_prob"],
             "final_nll": s["final_nll"]}
        if objective == "prompt_last":
            e["objective_nll"] = s["prompt_last_nll"]
        per.append(e)
    training = {"layer": L, "parameters": [name], "objective": objective, **record,
                "requests": len(rows), "lr": lr, "nll_stop": nll_stop}
    if norm_constraint:
        (d,) = patch.deltas.values()
        bound = _float_below(norm_constraint, d.tensors["delta"].dtype)
        d.tensors["delta"].clamp_(-bound, bound)
        training["norm_constraint"] = norm_constraint
        training["max_abs_delta"] = d.tensors["delta"].abs().max().item()
    training.update(per_request=per, converged=sum(e["converged"] for e in per), seconds=round(time.time() - t0, 3))
    patch.manifest["training"] = training
    return patch
