"""FT-M: fine-tune one MLP down-projection with the target tokens' cross-entropy, prompt masked.

From EasyEdit's FT-M (Zhang et al. 2024, "A Comprehensive Study of Knowledge Editing for Large
Language Models"; FT-L of Meng et al. 2022 with the loss restricted to the target tokens). The
weights of ``layers[layer].mlp.down_proj`` are trained; nothing else changes.

Deviation, documented: for erasure, retain pairs are mixed into the training set with weight
``retain_weight`` (0 disables them), because the sanitation task trains on both K_F and K_R;
EasyEdit's FT-M trains on the edit requests alone. Their targets are the base model's own greedy
answers by default (``retain_target=self``; ``gold`` uses the dataset's), see
:func:`trustedit.methods.base.retain_pairs`.

As a knowledge editor (``train`` an :class:`~trustedit.methods.requests.EditRequest` or a list of
them; :data:`EDITOR` is the per-instance method): the same weight is tuned on each request's
target tokens (prompt masked, no EOS after the target) with AdamW at ``edit_lr`` and no weight
decay, for at most ``edit_steps`` steps per request (EasyEdit's FT-M: layer 21 of Llama-7B's 32,
lr 5e-4, 25 steps), stopping once every request's mean target NLL is below ``edit_nll_stop``
(EasyEdit: 1e-2 on the loss; 0.05 here, i.e. a geometric-mean token probability above 0.95). Several
requests in one fit are trained breadth-first by default (LocFT-BF, Yang et al. 2025: ``edit_epochs``
epochs over mini-batches of ``edit_batch_size`` requests) or depth-first (EasyEdit's sequential
editing). See :mod:`trustedit.methods.ft_edit` for the schedules, the cache of the frozen lower
layers and the manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.base import (Method, MethodConfig, layer_index, opt, retain_pairs, sample_items, set_seed,
                                    train_pairs, training_record)


from trustedit.methods.base import RETAIN_TARGETS  # the values the config accepts
from trustedit.methods.ft_edit import SCHEDULES


@dataclass
class FTMConfig(MethodConfig):
    layer: float = opt(0.66, "Layer whose MLP down-projection is tuned: an int index, or a fraction of depth in [0,1).",
                       layer=True)
    lr: float = opt(5e-4, "AdamW learning rate.", gt=0)
    epochs: int = opt(4, "Passes over the training pairs.", ge=1)
    max_steps: int = opt(0, "Stop after this many optimiser steps (0: use epochs).", ge=0)
    warmup_steps: int = opt(5, "Linear warm-up steps.", ge=0)
    weight_decay: float = opt(0.0, "AdamW weight decay.", ge=0)
    retain_weight: int = opt(1, "Copies of the retain pairs mixed into training (0: forget pairs only).", ge=0)
    retain_target: str = opt("self", "Retain targets: 'gold' (dataset answers, the paper) or 'self' (the base model's own greedy answers).",
                             choices=RETAIN_TARGETS)
    retain_limit: int = opt(160, "Use at most this many retain pairs (0: all), a seeded sample.", ge=0)
    batch_size: int = opt(8, "Training batch size (sequences).", ge=1)
    # editing requests (``trustedit edit``); the options above are erasure's
    edit_lr: float = opt(5e-4, "Editing requests: AdamW learning rate, no weight decay (EasyEdit FT-M: 5e-4).", gt=0)
    edit_steps: int = opt(25, "Editing requests: most optimiser steps per request, single or depth-first "
                          "(EasyEdit FT-M: 25).", ge=1)
    edit_nll_stop: float = opt(0.05, "Editing requests: stop once every request's mean target-token NLL is below "
                               "this (0: never early; EasyEdit: 0.01).", ge=0)
    edit_schedule: str = opt("breadth-first", "Editing several requests in one fit: 'breadth-first' (LocFT-BF: "
                             "epochs of mini-batches over all requests) or 'depth-first' (EasyEdit: each request "
                             "to the end, then the next).", choices=SCHEDULES)
    edit_batch_size: int = opt(8, "Editing requests breadth-first: requests per mini-batch.", ge=1)
    edit_epochs: int = opt(25, "Editing requests breadth-first: most passes over the requests (LocFT-BF: 25).",
                           ge=1)


def is_edit(train) -> bool:
    """Whether ``train`` is edit requests (one, or a list of them) rather than erasure's training pairs."""
    from trustedit.methods.requests import EditRequest

    return isinstance(train, (EditRequest, list, tuple))


def fit(lm, train, cfg: FTMConfig, stages=None):
    """``train``: forget and retain pairs (:class:`trustedit.suites.sanitation.TrainPairs`), or edit
    requests (:func:`is_edit`; then see :func:`trustedit.methods.ft_edit.edit`)."""
    if is_edit(train):
        from trustedit.methods.ft_edit import edit

        return edit(lm, train, method="ft-m", layer=cfg.layer, objective="target", lr=cfg.edit_lr,
                    steps=cfg.edit_steps, epochs=cfg.edit_epochs, batch_size=cfg.edit_batch_size,
                    schedule=cfg.edit_schedule, nll_stop=cfg.edit_nll_stop, seed=cfg.seed)
    from trustedit import arch
    from trustedit.hooks import only_trainable
    from trustedit.patch import dense_patch_from

    set_seed(cfg.seed)
    model = lm.model
    L = layer_index(cfg.layer, arch.num_layers(model))
    name = arch.layer_path(model, L, arch.arch_for(model).down) + ".weight"
    retain = retain_pairs(lm, sample_items(train.retain, cfg.retain_limit, cfg.seed), cfg.retain_target)
    pairs = list(train.forget) + list(retain) * cfg.retain_weight
    before = {name: dict(model.named_parameters())[name].detach().clone()}
    t0 = time.time()
    with only_trainable(model, [name]) as params:
        losses = train_pairs(model, pairs, params, lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps or None,
                             batch_size=cfg.batch_size, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                             seed=cfg.seed, pad_id=lm.tokenizer.pad_token_id, desc="ft-m")
    patch = dense_patch_from(model, before, "ft-m")
    patch.manifest["training"] = training_record(losses, pairs, t0, layer=L, parameters=[name])
    return patch


METHOD = Method(
    name="ft-m",
    config=FTMConfig,
    fit=fit,
    citation="Zhang et al. 2024, A Comprehensive Study of Knowledge Editing for LLMs (EasyEdit FT-M); "
             "breadth-first batches: Yang et al. 2025, Fine-tuning Done Right in Model Editing (LocFT-BF)",
    summary="fine-tune one MLP down-projection on the target tokens (prompt masked)",
    train="trustedit.suites.sanitation:train_pairs",
    edits_requests=True,  # `trustedit edit` gives it edit requests (single, batch, sequential)
)
