"""LoRA as a knowledge editor: a low-rank adapter trained on the edit requests, then merged into the
weights (KnowEdit's "merge knowledge into the model" family).

From Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR), as EasyEdit runs
it for KnowEdit (Zhang et al. 2024, "A Comprehensive Study of Knowledge Editing for Large Language
Models"; ``easyeditor/models/lora/lora_main.py`` and ``hparams/LoRA/*.yaml``). The adapter
``ΔW = (alpha / r) · B A`` (``B`` zero at the start, so training starts at the unedited model) is
added by PEFT (``LoraConfig``) to the projections named by ``targets`` (architecture roles, see
:func:`adapter_modules`) of every layer from ``first_layer`` up, and trained on the requests' target
tokens (prompt masked, no EOS after the target, teacher forced: :mod:`trustedit.methods.ft_edit`'s
``target`` objective) with the schedules of :func:`trustedit.methods.ft_edit.run_schedule`: one
request until its mean target NLL is below ``nll_stop`` or ``steps`` steps; several requests
breadth-first (LocFT-BF, Yang et al. 2025: ``epochs`` passes of seeded mini-batches of
``batch_size`` requests, one optimiser) or depth-first (each request to the end, then the next).
The adapter is then read off as low-rank deltas and removed (``unload``): the model is left bit for
bit as it was, its ``requires_grad`` flags and train/eval mode restored, and the returned
:class:`~trustedit.patch.Patch` holds one ``lowrank`` delta per adapted weight, in the weight's own
orientation (GPT-2's Conv1D stores ``Wᵀ``).

Defaults, from EasyEdit's ``hparams/LoRA/llama-7b.yaml`` (the KnowEdit setting; the Llama-3 files
are the same): rank 8, alpha 32, targets q and v of every layer (``layers: []``), lr 5e-3 with Adam
and no weight decay, 70 steps.

Deviations, documented:

* Early stop: EasyEdit always runs its 70 steps; here a fit stops once every request's mean target
  NLL is below ``nll_stop`` (0.05: geometric-mean token probability above 0.95), as FT-M does.
* No EOS: EasyEdit appends ``<|endoftext|>`` to the target and trains on it; KnowEdit scores the
  target's own tokens, so only they are trained (see :func:`~trustedit.methods.requests.encode_request`).
* Dropout: EasyEdit sets ``lora_dropout`` 0.1 but trains with the model in eval mode, where PEFT's
  dropout does nothing; the default here is 0 (the same arithmetic). A ``dropout`` > 0 puts the
  adapter's own dropout modules (only them) in train mode during the steps; the scores and the
  early stop at the end are without dropout.
* Several requests: EasyEdit loops ``num_steps`` times over chunks of ``batch_size`` requests (1 in
  its yaml) with one optimiser, i.e. breadth-first without a stop; here LocFT-BF's breadth-first
  schedule (mini-batches of 8, at most ``epochs`` = 70 passes, the same stop) or depth-first.
* GPT-2 has no separate q/k/v projections: the roles q, k, v there name its fused ``c_attn``
  (the adapter then changes all three).
* AdamW with weight decay 0 is Adam; the lower layers, which have no adapter when ``first_layer`` >
  0, run once (their hidden states cached, as in :class:`~trustedit.methods.ft_edit.Runner`).

The manifest's ``training`` records the schedule, steps (and epochs), the step budget, per request
``{id, converged, target_prob, final_nll}``, the adapted modules, the scale, the seconds and the
resolved configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, layer_index, opt
from trustedit.methods.ft_edit import SCHEDULES
from trustedit.methods.lora import ROLES


@dataclass
class AdapterEditFields(MethodConfig):
    """What the LoRA and AdaLoRA editors share: where the adapter goes and how it is trained."""

    batch_size: int = opt(8, "Several requests breadth-first: requests per mini-batch (LocFT-BF: 8; EasyEdit's "
                          "LoRA: 1).", ge=1)
    alpha: float = opt(32.0, "LoRA alpha (EasyEdit KnowEdit: 32).", gt=0)
    dropout: float = opt(0.0, "Adapter dropout during the steps (EasyEdit sets 0.1 but trains in eval mode, where "
                         "it is inactive: 0 is the same arithmetic).", ge=0, lt=1)
    targets: list = opt(["q", "v"], "Projection roles to adapt (q, k, v, o, gate, up, down; EasyEdit: q, v). On "
                        "GPT-2, q/k/v name the fused c_attn.", choices=ROLES, item="LoRA target role", min_items=1)
    first_layer: float = opt(0, "Adapt the layers from this one up: an int index or a fraction of depth in [0,1) "
                             "(EasyEdit: every layer).", layer=True)
    lr: float = opt(5e-3, "Adam learning rate, no weight decay (EasyEdit KnowEdit: 5e-3).", gt=0)
    steps: int = opt(70, "Most optimiser steps for one request, and per request depth-first (EasyEdit: 70).", ge=1)
    nll_stop: float = opt(0.05, "Stop once every request's mean target-token NLL is below this (0: never early; "
                          "EasyEdit runs all steps).", ge=0)
    schedule: str = opt("breadth-first", "Several requests in one fit: 'breadth-first' (LocFT-BF: epochs of "
                        "mini-batches over all requests) or 'depth-first' (each request to the end, then the next).",
                        choices=SCHEDULES)
    epochs: int = opt(70, "Several requests breadth-first: most passes over the requests (EasyEdit's LoRA loops "
                      "num_steps=70 times over them).", ge=1)


@dataclass
class LoraEditConfig(AdapterEditFields):
    rank: int = opt(8, "LoRA rank r; the update is scaled by alpha / r (EasyEdit KnowEdit: 8).", ge=1)


def adapter_modules(model, roles, first_layer=0) -> tuple[list[str], int]:
    """``(full module names, first adapted layer)``: :func:`trustedit.methods.lora.target_modules`
    with q, k and v falling back to a fused q/k/v projection (GPT-2's ``c_attn``)."""
    from trustedit import arch
    from trustedit.methods.lora import target_modules

    return target_modules(model, roles, first_layer, fused_qkv=True), layer_index(first_layer, arch.num_layers(model))


def lora_deltas(peft_model, modules, conv1d: bool, adapter: str = "default") -> tuple[dict, dict]:
    """``(deltas, info)``: each module's LoRA update ``(alpha / r) · B A`` as a low-rank
    :class:`~trustedit.patch.Delta` of ``module.weight`` (fp32, CPU, the weight's orientation)."""
    import torch

    from trustedit.patch import Delta

    mods = dict(peft_model.base_model.model.named_modules())
    deltas, scale = {}, None
    for name in modules:
        m = mods[name]
        A = m.lora_A[adapter].weight.detach().to("cpu", torch.float32).clone()  # r x in
        B = m.lora_B[adapter].weight.detach().to("cpu", torch.float32).clone()  # out x r
        scale = float(m.scaling[adapter])
        if conv1d:  # weight stored as in x out: delta^T = A^T B^T
            A, B = B.t().contiguous(), A.t().contiguous()
        deltas[name + ".weight"] = Delta("lowrank", {"B": B, "A": A}, scale)
    return deltas, {"scale": scale}


def adapter_edit(lm, train, cfg: AdapterEditFields, *, method: str, peft_config, read_deltas, hooks=None) -> object:
    """Train a PEFT adapter on the edit requests of ``train`` and return it as a low-rank
    :class:`~trustedit.patch.Patch` (see the module docstring); the model is left as it was.

    ``peft_config(modules, conv1d, budget)`` builds the PEFT config (``budget``: the schedule's most
    steps, :func:`~trustedit.methods.ft_edit.step_budget`); ``read_deltas(peft_model, modules,
    conv1d) -> (deltas, info)`` reads the trained adapter; ``hooks(peft_model, budget) ->
    (regulariser, after_step)`` (optional) adds a term to the loss and a call after every
    optimiser step (AdaLoRA's orthogonal regulariser and rank allocation)."""
    from peft import get_peft_model

    from trustedit import arch
    from trustedit.methods.base import set_seed
    from trustedit.methods.ft_edit import Runner, request_rows, run_schedule, step_budget
    from trustedit.methods.requests import as_requests
    from trustedit.patch import Patch

    requests = as_requests(train, method, subject=False)
    set_seed(cfg.seed)
    t0 = time.time()
    model, tok = lm.model, lm.tokenizer
    modules, L = adapter_modules(model, cfg.targets, cfg.first_layer)
    conv1d = arch.arch_for(model).conv1d
    rows, pad = request_rows(tok, requests)
    budget = step_budget(len(rows), cfg.schedule, cfg.steps, cfg.epochs, cfg.batch_size)
    config = peft_config(modules, conv1d, budget)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    run = Runner(model, L, pad)
    try:
        run.cache(rows)  # the layers below L carry no adapter
        peft_model = get_peft_model(model, config)
    except BaseException:
        model.train(was_training)
        raise
    try:
        peft_model.eval()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        drops = [m.lora_dropout[a] for m in peft_model.modules() if hasattr(m, "lora_dropout")
                 for a in m.lora_dropout]
        regulariser, after_step = hooks(peft_model, budget) if hooks else (None, None)
        with run.upper_only():
            for d in drops:  # only the adapter's dropout trains (a no-op at dropout 0)
                d.train(cfg.dropout > 0)
            record = run_schedule(rows, prepare=lambda group: run.batch(group, "target"), nll=run.nll,
                                  params=params, method=method, lr=cfg.lr, steps=cfg.steps, epochs=cfg.epochs,
                                  batch_size=cfg.batch_size, schedule=cfg.schedule, nll_stop=cfg.nll_stop,
                                  seed=cfg.seed, lengths=[len(r.seq("target")) for r in rows],
                                  regulariser=regulariser, after_step=after_step, desc=method)
            for d in drops:
                d.eval()
            final = run.scores(rows)
        deltas, info = read_deltas(peft_model, modules, conv1d)
    finally:
        restored = peft_model.unload()  # removes the adapter layers; the base weights were never written
        assert restored is model
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
    per = [{"id": r.id, "converged": s["target_prob"] >= 0.5, "target_prob": s["target_prob"],
            "final_nll": s["final_nll"]} for r, s in zip(rows, final)]
    training = {"adapter": type(config).__name__, "targets": list(cfg.targets), "first_layer": L,
                "modules": len(modules), **info, "lr": cfg.lr, "nll_stop": cfg.nll_stop, **record,
                "step_budget": budget, "requests": len(rows), "per_request": per,
                "converged": sum(e["converged"] for e in per), "seconds": round(time.time() - t0, 3),
                "config": cfg.to_dict()}
    patch = Patch(method, deltas)
    patch.manifest["training"] = training
    return patch


def fit(lm, train, cfg: LoraEditConfig, stages=None):
    """Edit the requests of ``train`` with a LoRA adapter merged into the weights (module docstring)."""
    from peft import LoraConfig

    def peft_config(modules, conv1d, budget):
        return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(modules),
                          bias="none", fan_in_fan_out=conv1d)

    return adapter_edit(lm, train, cfg, method="lora", peft_config=peft_config, read_deltas=lora_deltas)


METHOD = Method(
    name="lora", config=LoraEditConfig, fit=fit, edits_requests=True,
    train="trustedit.suites.sanitation:edit_requests",  # on `trustedit erase`: the forget questions
    citation="Hu et al. 2022, LoRA: Low-Rank Adaptation of Large Language Models (ICLR); as a knowledge editor: "
             "Zhang et al. 2024, A Comprehensive Study of Knowledge Editing for LLMs (EasyEdit/KnowEdit)",
    summary="train a LoRA adapter (q, v) on the target tokens and merge it as low-rank deltas")
