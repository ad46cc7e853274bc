"""LoRA adapters trained with PEFT and returned as low-rank deltas (shared by every method that
trains one: knowledge sanitization, Ext-Sub's expert and anti-expert).

Module names come from the architecture table (roles q, k, v, o, gate, up, down), never from
model names. The adapter is removed after training (``peft_model.unload()``), so the model is
returned with its base weights untouched and its ``requires_grad`` flags restored.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.methods.base import MethodConfig, layer_index, opt, set_seed, train_pairs

ROLES = ("q", "k", "v", "o", "gate", "up", "down")  # ArchSpec fields naming one projection each


@dataclass
class LoraFields(MethodConfig):
    """The adapter's shape, shared by the configs of the methods that train one refusal adapter
    (``sanitation-lora``, ``sanitation-scope+lora``); a method adds its own schedule."""

    rank: int = opt(8, "LoRA rank r.", ge=1)
    alpha: float = opt(16.0, "LoRA alpha; the update is scaled by alpha / r.", gt=0)
    dropout: float = opt(0.05, "LoRA dropout during training.", ge=0, lt=1)
    targets: list = opt(["q", "v", "gate"], "Projection roles to adapt (q, k, v, o, gate, up, down).", choices=ROLES,
                        item="LoRA target role", min_items=1)


def target_modules(model, roles, first_layer=0.0, fused_qkv: bool = False) -> list[str]:
    """Full module names of ``roles`` in every layer from ``first_layer`` (an index or a fraction of
    depth). ``fused_qkv``: q, k and v fall back to a fused q/k/v projection (GPT-2's ``c_attn``) where
    the architecture has one (each module named once)."""
    from trustedit import arch
    from trustedit.errors import UsageError

    spec = arch.arch_for(model)
    n = arch.num_layers(model)
    first = layer_index(first_layer, n)
    rels = []
    for role in roles:
        if role not in ROLES:
            raise UsageError(f"unknown LoRA target role {role!r} (known: {', '.join(ROLES)})")
        rel = getattr(spec, role)
        if rel is None and fused_qkv and role in ("q", "k", "v"):
            rel = spec.qkv_fused
        if rel is None:
            raise UsageError(f"architecture {model.config.model_type} has no separate {role} projection")
        if rel not in rels:
            rels.append(rel)
    return [arch.layer_path(model, i, rel) for rel in rels for i in range(first, n)]


def train_lora(lm, pairs, modules, *, rank, alpha, dropout, lr, epochs=1, max_steps=None, batch_size=8,
               warmup_steps=0, weight_decay=0.0, seed=0, desc="lora"):
    """Train a LoRA adapter on ``modules`` (target-token cross-entropy over ``pairs``).

    Returns ``(deltas, losses)``: ``deltas[module + ".weight"]`` is a low-rank
    :class:`~trustedit.patch.Delta` ``(alpha / r) * B @ A`` in the parameter's own orientation
    (GPT-2's Conv1D stores ``Wᵀ``, whose delta is ``Aᵀ Bᵀ``)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trustedit.patch import Delta

    set_seed(seed)
    model = lm.model
    from trustedit.arch import arch_for

    conv1d = arch_for(model).conv1d  # the architecture table knows how weights are stored
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(modules), bias="none",
                      fan_in_fan_out=conv1d)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    peft_model = get_peft_model(model, lora)
    try:
        params = [p for p in peft_model.parameters() if p.requires_grad]
        losses = train_pairs(peft_model, pairs, params, lr=lr, epochs=epochs, max_steps=max_steps or None,
                             batch_size=batch_size, warmup_steps=warmup_steps, weight_decay=weight_decay, seed=seed,
                             pad_id=lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0,
                             desc=desc)
        deltas = {}
        mods = dict(peft_model.base_model.model.named_modules())
        for name in modules:
            m = mods[name]
            A = m.lora_A["default"].weight.detach().to("cpu", torch.float32).clone()  # r x in
            B = m.lora_B["default"].weight.detach().to("cpu", torch.float32).clone()  # out x r
            scale = float(m.scaling["default"])
            if conv1d:  # weight stored as in x out: delta^T = A^T B^T
                A, B = B.t().contiguous(), A.t().contiguous()
            deltas[name + ".weight"] = Delta("lowrank", {"B": B, "A": A}, scale)
    finally:
        restored = peft_model.unload()  # removes the LoRA layers; base weights untouched
        assert restored is model
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    model.eval()
    return deltas, losses
