"""FT-L: fine-tune one MLP down-projection on the target read at the last prompt token, within an
L∞ ball around the original weight.

The constrained fine-tuning of Zhu et al. 2020 ("Modifying Memories in Transformer Models"), as
ROME's FT-L baseline (Meng et al. 2022) and EasyEdit's FT-L (``objective_optimization:
prompt_last``) run it: AdamW (no weight decay) on ``layers[layer].<down projection>.weight``, and
after every step the weight is projected back to ``|W - W0|_∞ <= norm_constraint``.

The objective, as EasyEdit computes it: the input is the prompt alone, and the log-probability of
*every* token of the target is read from the one next-token distribution at the last prompt
position; a request's loss is their mean. For a one-token target this is the target's NLL; for a
longer one it is a bag-of-tokens objective that makes each of the target's tokens a likely next
token but never trains the continuation after the first, which is why FT-L writes multi-token
targets poorly and why FT-M (teacher-forced, :mod:`trustedit.methods.ft_m`) was introduced. It is
kept unchanged so that FT-L here is the published baseline. The manifest reports both the objective's
NLL (``objective_nll``) and the teacher-forced ``final_nll`` / ``target_prob`` that KnowEdit scores.

Defaults: ``norm_constraint`` 5e-5 (EasyEdit's Llama-7B FT-L; ROME's FT-L on GPT-2 XL uses 5e-4),
lr 5e-4, 25 steps, layer at 0.66 of depth (EasyEdit: 21 of Llama-7B's 32). Requests, schedules,
early stopping, the cache of the frozen lower layers and the manifest are those of
:mod:`trustedit.methods.ft_edit`; the patch's delta is clamped to the bound in the weight's dtype,
so it respects it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, opt
from trustedit.methods.ft_edit import SCHEDULES


@dataclass
class FTLConfig(MethodConfig):
    layer: float = opt(0.66, "Layer whose MLP down-projection is tuned: an int index, or a fraction of depth in [0,1) "
                       "(EasyEdit FT-L: 21 of Llama-7B's 32).", layer=True)
    lr: float = opt(5e-4, "AdamW learning rate, no weight decay (EasyEdit FT-L: 5e-4).", gt=0)
    steps: int = opt(25, "Most optimiser steps per request, single or depth-first (EasyEdit FT-L: 25).", ge=1)
    norm_constraint: float = opt(5e-5, "L∞ bound on the weight change, enforced after every step (EasyEdit FT-L on "
                                 "Llama-7B: 5e-5; ROME's FT-L: 5e-4; 0: unconstrained).", ge=0)
    nll_stop: float = opt(0.05, "Stop once every request's objective NLL (target tokens at the last prompt token) "
                          "is below this (0: never early; EasyEdit: 0.01).", ge=0)
    schedule: str = opt("breadth-first", "Several requests in one fit: 'breadth-first' (LocFT-BF: epochs of "
                        "mini-batches over all requests) or 'depth-first' (EasyEdit: each request to the end, then "
                        "the next).", choices=SCHEDULES)
    batch_size: int = opt(8, "Breadth-first: requests per mini-batch.", ge=1)
    epochs: int = opt(25, "Breadth-first: most passes over the requests.", ge=1)


def fit(lm, train, cfg: FTLConfig, stages=None):
    """Edit the requests of ``train`` (an :class:`~trustedit.methods.requests.EditRequest` or a list of
    them); a dense reversible patch (see :func:`trustedit.methods.ft_edit.edit`)."""
    from trustedit.methods.ft_edit import edit

    return edit(lm, train, method="ft-l", layer=cfg.layer, objective="prompt_last", lr=cfg.lr, steps=cfg.steps,
                epochs=cfg.epochs, batch_size=cfg.batch_size, schedule=cfg.schedule, nll_stop=cfg.nll_stop,
                norm_constraint=cfg.norm_constraint, seed=cfg.seed)


METHOD = Method(
    name="ft-l",
    config=FTLConfig,
    fit=fit,
    citation="Zhu et al. 2020, Modifying Memories in Transformer Models; FT-L baseline of Meng et al. 2022 (ROME) "
             "and EasyEdit",
    summary="edit facts: fine-tune one MLP down-projection on the target at the last prompt token, L∞-bounded",
    edits_requests=True,
    train="trustedit.suites.sanitation:edit_requests",
)
