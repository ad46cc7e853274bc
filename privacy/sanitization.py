"""Knowledge sanitization (Ishibashi & Shimodaira 2023, arXiv:2309.11852).

Fine-tune LoRA adapters so that questions about the facts to forget are answered
"I don't know." while retain questions keep their gold answers. Reference recipe: LoRA r=8,
alpha=16, dropout 0.05 on the q/v/gate projections, AdamW lr 3e-4.

Deviations, documented:

* the reference code warms the learning rate up over the whole run; we warm up over
  ``warmup_steps`` (short) and then decay linearly;
* the adapter is returned as a low-rank Patch (``alpha/r * B @ A`` per module) that is merged
  into the weights on apply, so inference costs nothing extra and revert is exact;
* by default only a seeded sample of the retain set (``retain_limit``) is used per run, so
  that the default job fits in minutes on a 2-core CPU; set ``retain_limit=0`` for all;
* by default the retain targets are the base model's own greedy answers (``retain_target=self``)
  rather than the gold answers (``gold``, the paper). The paper's 7B model knows most retain
  answers, so both coincide there; a 135M model knows about 5 %, and training on 453 unknown
  gold answers moves its predictions everywhere (measured: locality 0.40 with gold vs 0.75 with
  self, see benchmarks/RESULTS.md);
* the reference trains 20 epochs at batch 128; the default here is 2 epochs at batch 8.
* module names come from the architecture table (roles q, v, gate, ...), not from names.
* the loss is on the answer tokens only (the prompt is masked out of the labels), and gradients
  are clipped to norm 1.0 (:func:`trustedit.methods.base.train_pairs`); the reference recipe
  (Alpaca-LoRA's training loop) does neither: it trains on prompt and answer alike, unclipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.base import Method, opt, retain_pairs, sample_items, set_seed, training_record


from trustedit.methods.base import RETAIN_TARGETS  # the values the config accepts
from trustedit.methods.lora import LoraFields


@dataclass
class SanitizationConfig(LoraFields):
    first_layer: float = opt(0.0, "Lowest adapted layer: an index or a fraction of depth (0: all layers).", layer=True)
    lr: float = opt(3e-4, "AdamW learning rate.", gt=0)
    epochs: int = opt(2, "Passes over the training pairs.", ge=1)
    max_steps: int = opt(0, "Stop after this many optimiser steps (0: use epochs).", ge=0)
    warmup_steps: int = opt(5, "Linear warm-up steps (the reference warms up over the whole run).", ge=0)
    weight_decay: float = opt(0.0, "AdamW weight decay.", ge=0)
    retain_target: str = opt("self", "Retain targets: 'gold' (dataset answers, the paper) or 'self' (the base model's own greedy answers).",
                             choices=RETAIN_TARGETS)
    retain_limit: int = opt(160, "Use at most this many retain pairs (0: all), a seeded sample.", ge=0)
    batch_size: int = opt(8, "Training batch size (sequences).", ge=1)


def target_modules(model, cfg: SanitizationConfig) -> list[str]:
    """Full module names to adapt, from the architecture table."""
    from trustedit.methods.lora import target_modules as modules_for

    return modules_for(model, cfg.targets, cfg.first_layer)


def fit(lm, train, cfg: SanitizationConfig, stages=None):
    """``train``: forget and retain pairs (:class:`trustedit.suites.sanitation.TrainPairs`)."""
    from trustedit.methods.lora import train_lora
    from trustedit.patch import Patch

    set_seed(cfg.seed)
    modules = target_modules(lm.model, cfg)
    pairs = list(train.forget) + retain_pairs(lm, sample_items(train.retain, cfg.retain_limit, cfg.seed),
                                              cfg.retain_target)
    t0 = time.time()
    deltas, losses = train_lora(lm, pairs, modules, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, lr=cfg.lr,
                                epochs=cfg.epochs, max_steps=cfg.max_steps or None, batch_size=cfg.batch_size,
                                warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, seed=cfg.seed,
                                desc="sanitation-lora")
    patch = Patch("sanitation-lora", deltas)
    patch.manifest["training"] = training_record(losses, pairs, t0, modules=len(modules))
    return patch


METHOD = Method(
    name="sanitation-lora",
    config=SanitizationConfig,
    fit=fit,
    citation="Ishibashi & Shimodaira 2023, Knowledge Sanitization of Large Language Models (arXiv:2309.11852)",
    summary="LoRA fine-tuning: forget questions -> \"I don't know.\", retain questions -> their answers (the base model's own by default; gold with retain_target=gold)",
    train="trustedit.suites.sanitation:train_pairs",
)
