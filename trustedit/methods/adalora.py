"""AdaLoRA as a knowledge editor: an SVD-form adapter whose rank budget is pruned to the most
important triplets while it is trained on the edit requests, then merged into the weights.

From Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning" (AdaLoRA,
ICLR), via PEFT (``AdaLoraConfig``), as EasyEdit runs it for KnowEdit (Zhang et al. 2024, "A
Comprehensive Study of Knowledge Editing for Large Language Models"; ``lora_type: adalora`` in
``hparams/LoRA/llama3.2-1b.yaml``). Each adapted weight gets ``ΔW = P Λ Q · alpha / r_0`` (PEFT:
``B (A ⊙ E) · scaling / ranknum``, ``E`` the singular values, zero at the start), trained on the
requests' target tokens with the schedules of :mod:`trustedit.methods.lora_edit` (one request: until
its mean target NLL is below ``nll_stop``; several: breadth-first LocFT-BF by default, or
depth-first). The loss is the mean target NLL plus ``orth_reg_weight`` × the mean over the ``A`` and
``B`` matrices of ``‖P Pᵀ − I‖_F`` (the paper's eq. 4, written as PEFT's ``AdaLoraModel.forward``
adds it when labels are given: the loss here is computed outside the model, so the term is added
the same way; the early stop reads the NLL alone). After every optimiser step
``update_and_allocate(step)`` updates the sensitivity scores and masks the least important
triplets (``E`` entries set to zero) along PEFT's cubic budget schedule from ``init_r`` to
``target_r`` per module on average, over ``total_step`` = the schedule's step budget
(:func:`~trustedit.methods.ft_edit.step_budget`), with ``tinit`` / ``tfinal`` given as fractions of
that budget.

The adapter is returned as one low-rank delta per weight: ``E`` is folded into ``A`` and
``scaling / (ranknum + 1e-5)`` (PEFT's own expression) is the delta's scale; masked triplets (zero
rows of ``A ⊙ E``) are dropped, so a delta's rank is the rank the allocation left it. This equals
PEFT's ``merge_and_unload`` weight change to fp32 rounding (tested). The adapter is then removed
(``unload``): the model is left bit for bit as it was.

Defaults: alpha 32, q and v of every layer, lr 5e-3, 70 steps from EasyEdit's LoRA hparams; init_r
12, target_r 8, tinit = tfinal = 0, deltaT 1, beta1 = beta2 = 0.85, orth_reg_weight 0.5: PEFT's
defaults, which EasyEdit inherits (it passes ``r``, which AdaLoRA ignores).

Deviations, documented (besides those of :mod:`trustedit.methods.lora_edit`: early stop, no EOS,
dropout 0, LocFT-BF for several requests):

* EasyEdit never calls ``update_and_allocate``, so its AdaLoRA keeps every rank (an SVD-form LoRA
  with the orthogonal regulariser); here the allocation runs as PEFT requires, so the budget is
  actually pruned. ``target_r = init_r`` turns the allocation off (EasyEdit's arithmetic).
* ``total_step`` is the schedule's most steps; a fit that stops early (converged) keeps the ranks
  allocated so far, and the manifest records them (``ranks``: module -> rank; ``rank_total``).
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.errors import UsageError
from trustedit.methods.base import Method, opt
from trustedit.methods.lora_edit import AdapterEditFields, adapter_edit


@dataclass
class AdaLoraEditConfig(AdapterEditFields):
    init_r: int = opt(12, "Initial rank of every adapted weight (PEFT default, as in EasyEdit).", ge=1)
    target_r: int = opt(8, "Average rank per weight the budget is pruned to (PEFT default, as in EasyEdit); "
                        "= init_r: no pruning.", ge=1)
    tinit: float = opt(0.0, "Fraction of the step budget trained before any pruning (PEFT/EasyEdit: 0 steps).",
                       ge=0, lt=1)
    tfinal: float = opt(0.0, "Fraction of the step budget trained at the final ranks (PEFT/EasyEdit: 0 steps).",
                        ge=0, lt=1)
    delta_t: int = opt(1, "Steps between two budget allocations (PEFT deltaT; default 1).", ge=1)
    beta1: float = opt(0.85, "EMA coefficient of the sensitivity (PEFT default).", gt=0, lt=1)
    beta2: float = opt(0.85, "EMA coefficient of the uncertainty (PEFT default).", gt=0, lt=1)
    orth_reg_weight: float = opt(0.5, "Weight of the orthogonal regulariser on P and Q (PEFT default).", ge=0)

    def __post_init__(self):
        super().__post_init__()
        if self.target_r > self.init_r:
            raise UsageError(f"AdaLoraEditConfig: target_r={self.target_r} must be <= init_r={self.init_r}")
        if self.tinit + self.tfinal >= 1:
            raise UsageError(f"AdaLoraEditConfig: tinit + tfinal = {self.tinit + self.tfinal:g} must be < 1 "
                             "(no step would be left for the budget allocation)")


def adalora_deltas(peft_model, modules, conv1d: bool, adapter: str = "default") -> tuple[dict, dict]:
    """``(deltas, info)``: each module's ``B (A ⊙ E) · scaling / (ranknum + 1e-5)`` as a low-rank
    :class:`~trustedit.patch.Delta` (``E`` folded into ``A``, masked triplets dropped; fp32, CPU, the
    weight's orientation); ``info``: the rank each module kept and the resolved step schedule."""
    import torch

    from trustedit.patch import Delta

    mods = dict(peft_model.base_model.model.named_modules())
    deltas, ranks = {}, {}
    for name in modules:
        m = mods[name]
        E = m.lora_E[adapter].detach().to("cpu", torch.float32)  # r x 1
        A = m.lora_A[adapter].detach().to("cpu", torch.float32) * E  # r x in
        B = m.lora_B[adapter].detach().to("cpu", torch.float32)  # out x r
        ranknum = m.ranknum[adapter].detach().to("cpu", torch.float32)
        scale = (torch.tensor(float(m.scaling[adapter]), dtype=torch.float32) / (ranknum + 1e-5)).item()
        keep = (E.view(-1) != 0).nonzero().view(-1)
        ranks[name] = int(keep.numel())
        if keep.numel() == 0:  # every triplet masked: a zero update, stored at rank one
            keep = torch.zeros(1, dtype=torch.long)
        A, B = A[keep].contiguous(), B[:, keep].contiguous()
        if conv1d:  # weight stored as in x out: delta^T = A^T B^T
            A, B = B.t().contiguous(), A.t().contiguous()
        deltas[name + ".weight"] = Delta("lowrank", {"B": B, "A": A}, scale)
    pc = peft_model.peft_config[adapter]
    return deltas, {"ranks": ranks, "rank_total": sum(ranks.values()), "total_step": pc.total_step,
                    "tinit_steps": pc.tinit, "tfinal_steps": pc.tfinal}


def orthogonal_regulariser(peft_model, weight: float, adapter: str = "default"):
    """``weight`` × the mean over the adapter's ``A`` and ``B`` of ``‖P Pᵀ − I‖_F`` (``A Aᵀ``, ``Bᵀ B``),
    as PEFT's ``AdaLoraModel.forward`` adds it to a loss; None at weight 0."""
    import torch

    if weight == 0:
        return None
    mats = [(n, p) for n, p in peft_model.base_model.model.named_parameters()
            if ("lora_A" in n or "lora_B" in n) and adapter in n]

    def regulariser():
        total = 0.0
        for n, p in mats:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            total = total + torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, dtype=cov.dtype,
                                                                     device=cov.device))
        return weight * total / len(mats)

    return regulariser


def fit(lm, train, cfg: AdaLoraEditConfig, stages=None):
    """Edit the requests of ``train`` with an AdaLoRA adapter merged into the weights (module docstring)."""
    from peft import AdaLoraConfig

    def peft_config(modules, conv1d, budget):
        tinit, tfinal = int(cfg.tinit * budget), int(cfg.tfinal * budget)
        if tinit >= budget - tfinal:
            raise UsageError(f"adalora: tinit={cfg.tinit:g} and tfinal={cfg.tfinal:g} of a {budget}-step budget "
                             "leave no step for the budget allocation; lower them or raise steps/epochs")
        return AdaLoraConfig(init_r=cfg.init_r, target_r=cfg.target_r, tinit=tinit, tfinal=tfinal,
                             deltaT=cfg.delta_t, beta1=cfg.beta1, beta2=cfg.beta2,
                             orth_reg_weight=cfg.orth_reg_weight, total_step=budget, lora_alpha=cfg.alpha,
                             lora_dropout=cfg.dropout, target_modules=list(modules), bias="none",
                             fan_in_fan_out=conv1d)

    def hooks(peft_model, budget):
        def allocate(step):
            peft_model.base_model.update_and_allocate(step)

        return orthogonal_regulariser(peft_model, cfg.orth_reg_weight), (allocate if cfg.target_r < cfg.init_r else None)

    return adapter_edit(lm, train, cfg, method="adalora", peft_config=peft_config, read_deltas=adalora_deltas,
                        hooks=hooks)


METHOD = Method(
    name="adalora", config=AdaLoraEditConfig, fit=fit, edits_requests=True,
    train="trustedit.suites.sanitation:edit_requests",  # on `trustedit erase`: the forget questions
    citation="Zhang et al. 2023, Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (AdaLoRA, ICLR); as a "
             "knowledge editor: Zhang et al. 2024, A Comprehensive Study of Knowledge Editing for LLMs "
             "(EasyEdit/KnowEdit)",
    summary="train an AdaLoRA adapter (q, v; rank budget pruned) on the target tokens and merge it as low-rank deltas")
