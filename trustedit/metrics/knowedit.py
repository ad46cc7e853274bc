"""KnowEdit-style teacher-forced metrics (Zhang et al. 2024, EasyEdit).

Both use :func:`trustedit.prompts.predicted_target_tokens`, one code path:

* **Edit Succ.**: mean over target tokens of ``argmax == target token`` under teacher forcing,
  on the edit prompts with the new target ("I don't know.").
* **Locality**: mean over target tokens of ``argmax_post == argmax_pre`` under teacher forcing
  with the same prompt and gold answer, comparing the edited model with the base model.

The target's closing EOS / end-of-turn token (which trustedit appends to train on where an answer
ends) is not scored: KnowEdit tokenises targets without it (:func:`without_eos`). With it, "I don't
know." (5 tokens plus EOS on SmolLM2) would score the stop position as a sixth answer token.
"""

from __future__ import annotations

from trustedit.metrics.scores import Score

PROTOCOL_SUCC = ("KnowEdit Edit Succ.: teacher-forced token accuracy of the new target (its closing EOS not "
                 "scored); prompt format {fmt}")
PROTOCOL_LOC = ("KnowEdit Locality: teacher-forced, share of gold-answer positions (the closing EOS not scored) where "
                "the edited model's argmax equals the base model's; prompt format {fmt}")


def without_eos(predicted: list[list[int]], targets: list[list[int]], eos: int | None):
    """``(predicted, targets)`` with each target's last position dropped where the target ends with
    ``eos`` (and has another token before it)."""
    p2, t2 = [], []
    for p, t in zip(predicted, targets):
        if eos is not None and len(t) > 1 and t[-1] == eos:
            p, t = p[:-1], t[:-1]
        p2.append(list(p))
        t2.append(list(t))
    return p2, t2


def token_accuracy(predicted: list[list[int]], targets: list[list[int]]) -> list[float]:
    out = []
    for p, t in zip(predicted, targets):
        if len(p) != len(t):
            raise ValueError(f"prediction of {len(p)} tokens for a target of {len(t)}")
        out.append(sum(int(a == b) for a, b in zip(p, t)) / max(len(t), 1))
    return out


def edit_success(predicted, targets, fmt: str) -> Score:
    return Score("edit_success", PROTOCOL_SUCC.format(fmt=fmt), token_accuracy(predicted, targets), unit="fraction", display="percent")


def locality(pre_predicted, post_predicted, fmt: str) -> Score:
    return Score("locality", PROTOCOL_LOC.format(fmt=fmt), token_accuracy(post_predicted, pre_predicted), unit="fraction",
                 display="percent")
