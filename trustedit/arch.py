"""Where things are inside each supported architecture, keyed by ``config.model_type``.

This is the only place that knows module names. Methods ask for ``arch.layer(i).down`` etc.,
never sniff a model's name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from trustedit.errors import ArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """Dotted module paths; per-layer paths are relative to one decoder layer."""

    layers: str  # the ModuleList of decoder layers
    embed: str
    final_norm: str
    lm_head: str
    mlp: str
    down: str  # MLP output projection (input: intermediate activations)
    up: str
    gate: str | None  # None for non-gated MLPs
    q: str | None
    k: str | None
    v: str | None
    o: str
    qkv_fused: str | None = None  # e.g. GPT-2's c_attn
    conv1d: bool = False  # GPT-2 stores Linear weights transposed (Conv1D: in x out)

    def attention_targets(self) -> tuple[str, ...]:
        return tuple(x for x in (self.q, self.k, self.v, self.o, self.qkv_fused) if x)


_LLAMA_LIKE = ArchSpec(
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    mlp="mlp",
    down="mlp.down_proj",
    up="mlp.up_proj",
    gate="mlp.gate_proj",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    # the multimodal wrapper: the same decoder under model.language_model
    "gemma3": replace(_LLAMA_LIKE, layers="model.language_model.layers", embed="model.language_model.embed_tokens",
                      final_norm="model.language_model.norm"),
    "gpt2": ArchSpec(
        layers="transformer.h",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        mlp="mlp",
        down="mlp.c_proj",
        up="mlp.c_fc",
        gate=None,
        q=None,
        k=None,
        v=None,
        o="attn.c_proj",
        qkv_fused="attn.c_attn",
        conv1d=True,
    ),
}


def arch_for(config_or_model) -> ArchSpec:
    config = getattr(config_or_model, "config", config_or_model)
    model_type = getattr(config, "model_type", None)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ArchitectureError(f"unsupported architecture model_type={model_type!r} (supported: {known})") from None


def get_module(root, dotted: str):
    mod = root
    for part in dotted.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def layers(model):
    return get_module(model, arch_for(model).layers)


def num_layers(model) -> int:
    return len(layers(model))


def layer_path(model, i: int, rel: str) -> str:
    """Full dotted name (as in ``named_modules``) of ``rel`` inside decoder layer ``i``."""
    n = num_layers(model)
    if not -n <= i < n:
        raise ArchitectureError(f"layer {i} out of range: the model has {n} layers")
    return f"{arch_for(model).layers}.{i % n}.{rel}"


def short_name(dotted: str) -> str:
    """Last path component (``q_proj``), as used by PEFT's ``target_modules``."""
    return dotted.rsplit(".", 1)[-1]
