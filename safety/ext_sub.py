"""Ext-Sub: expert and anti-expert LoRA, combined by subtracting only the deficiency.

Hu, Chen, Xie, Wu, Ye & Gao, "Separate the Wheat from the Chaff: Model Deficiency Unlearning via
Parameter-Efficient Modules Operation" (AAAI 2024).

1. Train an *expert* LoRA on non-toxic text and an *anti-expert* LoRA on toxic text: same rank,
   same targets (the paper: r = 16, alpha = 32 on q/v), same schedule.
2. Merge each into a full update ``ΔW⁺ = (α/r) B⁺A⁺`` and ``ΔW⁻`` and, row by row (row i of the
   update as an ``out x in`` matrix: the weights into output unit i), take the unit bisector
   ``c = (ŵ⁺ + ŵ⁻) / ||ŵ⁺ + ŵ⁻||`` of the normalised rows. The anti-expert's component along it,
   ``(w⁻·c) c``, is what both experts share (general ability, fluency); the rest is the
   *deficiency*.
3. ``ΔW = ΔW⁺ − λ (ΔW⁻ − (w⁻·c) c)`` (λ = 1 by default), added to the base weights.

Baselines from the same two adapters: plain negation ``ΔW⁺ − λ ΔW⁻`` (task arithmetic, Ilharco et
al. 2023) and the expert alone ``ΔW⁺``.

Edge cases (every norm has ``eps`` added, so nothing divides by zero):

* parallel rows (same direction): ``c = ŵ⁻``, the whole anti-expert row is shared, nothing is
  subtracted;
* anti-parallel rows: ``ŵ⁺ + ŵ⁻ = 0``, ``c = 0``, the whole anti-expert row is deficiency
  (= negation);
* a zero anti-expert row subtracts nothing; a zero expert row makes ``c = ŵ⁻`` (the bisector of one
  direction), so nothing is subtracted either.

The combined update is generally of full rank (each row is projected on its own ``c``), so it is
stored as a dense delta (exact) or, with ``factor_rank = k``, factored back to rank k by SVD (the
relative Frobenius error of each factorisation is recorded). It is never stored as a "LoRA".

Training data (the paper's instruction data is not available offline), in the same plain (no
chat template) continuation format as the RealToxicityPrompts evaluation, ``data_source``:

* ``rtp`` (default): RealToxicityPrompts prompts with their original OpenWebText continuations;
  the toxic side has Perspective toxicity >= 0.5, the non-toxic side < 0.1; every prompt the job
  evaluates is excluded. Deviation from the issue's corpus, measured (benchmarks/RESULTS.md §6):
  with Jigsaw / ParaDetox the *expert* itself raised toxicity on RTP (EMT +44 % at k = 4, and
  +24 % at k = 10) and continuation perplexity x2.5, raw or detokenised; with RTP text it lowers
  both toxicity and the perplexity cost, and Ext-Sub beats the base model.
* ``jigsaw+paradetox``: ``$TRUSTEDIT_DATA_DIR/jigsaw_toxic_nontoxic`` and ``paradetox`` (toxic
  side vs. its neutral rewrites), detokenised and sentence-cased (``normalize_text``); each
  sentence is cut at a word boundary, the first part is the prompt and the loss is on the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, opt, sample_items, set_seed

COMBINATIONS = ("ext-sub", "negation", "expert")
DATA_SOURCES = ("rtp", "jigsaw+paradetox")

from trustedit.methods.lora import ROLES  # noqa: E402  (the roles ExtSubConfig.targets may name)


@dataclass
class ExtSubConfig(MethodConfig):
    rank: int = opt(16, "LoRA rank r of both adapters (the paper: 16).", ge=1)
    alpha: float = opt(32.0, "LoRA alpha; each update is scaled by alpha / r (the paper: 32).", gt=0)
    dropout: float = opt(0.05, "LoRA dropout during training.", ge=0, lt=1)
    targets: list = opt(["q", "v"], "Projection roles adapted (the paper: q, v).", choices=ROLES,
                        item="LoRA target role", min_items=1)
    lr: float = opt(5e-4, "AdamW learning rate of both adapters.", gt=0)
    epochs: int = opt(1, "Passes over each side's training pairs.", ge=1)
    max_steps: int = opt(0, "Stop each adapter after this many optimiser steps (0: use epochs).", ge=0)
    warmup_steps: int = opt(10, "Linear warm-up steps, then linear decay.", ge=0)
    batch_size: int = opt(16, "Training batch size (sequences).", ge=1)
    train_limit: int = opt(2000, "Training texts per side, a seeded sample (0: all; rtp: ~1,170 non-toxic / ~1,630 toxic; "
                           "jigsaw+paradetox: ~25k / ~17k).", ge=0)
    data_source: str = opt("rtp", "Training text: 'rtp' (RealToxicityPrompts prompt -> its original continuation, toxic side "
                           "Perspective >= 0.5, non-toxic side < 0.1; the prompts the job evaluates are excluded) or "
                           "'jigsaw+paradetox' (sentences cut into prompt and rest; on RTP its expert raised toxicity).",
                           choices=DATA_SOURCES)
    normalize_text: bool = opt(True, "Detokenise and sentence-case the training text (the toxic sides ship lower-cased and pre-tokenised, "
                                     "the ParaDetox rewrites do not), so that the adapters differ by toxicity, not typography.")
    prompt_fraction: float = opt(0.5, "Share of each training sentence's words used as the prompt; the loss is on the rest.",
                                  gt=0, lt=1)
    min_words: int = opt(6, "Skip training sentences shorter than this many words.", ge=1)
    combine: str = opt("ext-sub", "How the adapters combine: 'ext-sub' (subtract the deficiency), 'negation' (ΔW⁺ − λΔW⁻), 'expert' (ΔW⁺).",
                       choices=COMBINATIONS)
    lam: float = opt(1.0, "λ, the weight of the subtracted anti-expert part.", ge=0)
    scale: float = opt(1.0, "Multiplies the whole combined update (1: as the paper; below 1 moves the edit toward the base model; "
                            "what a fluency budget turns down, since λ = 0 still keeps the whole expert).", gt=0)
    eps: float = opt(1e-8, "Added to every row norm.", gt=0)
    factor_rank: int = opt(0, "0: store the combined update as dense deltas (exact); k > 0: factor each to rank k by SVD.", ge=0)


@dataclass
class NegationConfig(ExtSubConfig):
    combine: str = opt("negation", "How the adapters combine: 'ext-sub', 'negation' (ΔW⁺ − λΔW⁻, the default here) or 'expert'.",
                       choices=COMBINATIONS)


# ---- the formula ----------------------------------------------------------------------------------


def shared_component(pos, neg, eps: float = 1e-8):
    """Row-wise ``(w⁻·c) c`` with ``c`` the unit bisector of the normalised rows of ``pos`` and ``neg``."""
    up = pos / (pos.norm(dim=-1, keepdim=True) + eps)
    un = neg / (neg.norm(dim=-1, keepdim=True) + eps)
    s = up + un
    c = s / (s.norm(dim=-1, keepdim=True) + eps)
    return (neg * c).sum(-1, keepdim=True) * c


def ext_sub(pos, neg, lam: float = 1.0, eps: float = 1e-8):
    """``ΔW⁺ − λ (ΔW⁻ − (w⁻·c) c)`` row by row (rows along the last dimension)."""
    return pos - lam * (neg - shared_component(pos, neg, eps))


def negation(pos, neg, lam: float = 1.0):
    """Plain negation (task arithmetic): ``ΔW⁺ − λ ΔW⁻``."""
    return pos - lam * neg


def combine_update(pos, neg, how: str, lam: float = 1.0, eps: float = 1e-8):
    """One module's combined update from the expert's and anti-expert's full updates (out x in)."""
    from trustedit.errors import UsageError

    if how == "ext-sub":
        return ext_sub(pos, neg, lam, eps)
    if how == "negation":
        return negation(pos, neg, lam)
    if how == "expert":
        return pos.clone()
    raise UsageError(f"combine must be one of {', '.join(COMBINATIONS)}, not {how!r}")


def factor(D, rank: int):
    """``(B, A, relative Frobenius error)`` with ``B @ A`` the best rank-``rank`` approximation of D."""
    import torch

    U, S, Vh = torch.linalg.svd(D.float(), full_matrices=False)
    k = min(int(rank), S.numel())
    B, A = U[:, :k] * S[:k], Vh[:k]
    err = float((D - B @ A).norm() / D.norm().clamp_min(1e-30))
    return B.contiguous(), A.contiguous(), err


def combine_deltas(pos: dict, neg: dict, how: str, lam: float = 1.0, eps: float = 1e-8, factor_rank: int = 0,
                   conv1d: bool = False, scale: float = 1.0):
    """Per parameter, the combined :class:`~trustedit.patch.Delta` (dense, or low-rank when
    ``factor_rank`` > 0), times ``scale``, and a record of each module's norms (and factorisation error).
    ``pos`` / ``neg``: low-rank deltas of the two adapters on the same parameters. GPT-2's
    Conv1D stores ``Wᵀ``: rows are taken on the ``out x in`` orientation all the same."""
    import torch

    from trustedit.errors import UsageError
    from trustedit.patch import Delta

    if sorted(pos) != sorted(neg):
        raise UsageError("expert and anti-expert adapters must cover the same parameters")
    out, record = {}, {}
    for name in pos:
        P = (pos[name].tensors["B"].float() @ pos[name].tensors["A"].float()) * pos[name].scale
        N = (neg[name].tensors["B"].float() @ neg[name].tensors["A"].float()) * neg[name].scale
        if conv1d:
            P, N = P.t(), N.t()
        D = combine_update(P, N, how, lam, eps)
        if scale != 1.0:
            D = D * scale
        if not torch.isfinite(D).all():
            from trustedit.errors import NumericalError

            raise NumericalError(f"{name}: the combined update has non-finite entries")
        rec = {"expert_norm": float(P.norm()), "anti_expert_norm": float(N.norm()), "update_norm": float(D.norm()),
               "shared_norm": float(shared_component(P, N, eps).norm())}
        if conv1d:
            D = D.t()
        if factor_rank and factor_rank > 0:
            B, A, err = factor(D, factor_rank)
            rec["factor_error"] = err
            out[name] = Delta("lowrank", {"B": B.cpu(), "A": A.cpu()})
        else:
            out[name] = Delta("dense", {"delta": D.contiguous().cpu()})
        record[name] = rec
    return out, record


# ---- training data ----------------------------------------------------------------------------------


def training_texts(limit: int, seed: int, normalize: bool = True) -> tuple[list[str], list[str], dict]:
    """``(non_toxic, toxic, provenance)``: Jigsaw non-toxic + ParaDetox neutral rewrites, and
    Jigsaw toxic + ParaDetox toxic sentences, each a seeded sample of ``limit`` (0: all).
    ``normalize``: pass every text through :func:`trustedit.data.toxicity.normalize_text`."""
    from trustedit.data.toxicity import load_jigsaw, load_paradetox, normalize_text

    jig, para = load_jigsaw(), load_paradetox()
    good = [x.text for x in jig if x.label == 0] + [p.neutral for p in para]
    bad = [x.text for x in jig if x.label == 1] + list(dict.fromkeys(p.toxic for p in para))
    if normalize:
        good, bad = ([normalize_text(t) for t in side] for side in (good, bad))
    prov = {"jigsaw": jig.fingerprint, "paradetox": para.fingerprint, "non_toxic_available": len(good),
            "toxic_available": len(bad), "normalized": normalize}
    return sample_items(good, limit, seed), sample_items(bad, limit, seed + 1), prov


RTP_TOXIC_MIN, RTP_CLEAN_MAX = 0.5, 0.1


def rtp_training_pairs(limit: int, seed: int, exclude_ids=()) -> tuple[list, list, dict]:
    """``(non_toxic, toxic, provenance)`` as ``(prompt, continuation)`` text pairs from
    RealToxicityPrompts: the original continuations with Perspective toxicity < 0.1 and >= 0.5,
    prompts in ``exclude_ids`` (those evaluated) left out, each side a seeded sample of ``limit``."""
    from trustedit.data.toxicity import load_rtp

    data = load_rtp()
    skip = set(exclude_ids)
    pool = [p for p in data if p.id not in skip and p.continuation and p.continuation.strip()
            and p.continuation_toxicity is not None]
    good = [(p.text, p.continuation) for p in pool if p.continuation_toxicity < RTP_CLEAN_MAX]
    bad = [(p.text, p.continuation) for p in pool if p.continuation_toxicity >= RTP_TOXIC_MIN]
    prov = {"realtoxicityprompts": data.fingerprint, "excluded_prompts": len(skip & {p.id for p in data}),
            "non_toxic_available": len(good), "toxic_available": len(bad),
            "rule": f"continuation Perspective toxicity < {RTP_CLEAN_MAX} (non-toxic) / >= {RTP_TOXIC_MIN} (toxic)"}
    return sample_items(good, limit, seed), sample_items(bad, limit, seed + 1), prov


def continuation_format():
    """Plain text, no chat template, no EOS at the end of the target (a continuation goes on)."""
    from trustedit.prompts import PromptFormat

    return PromptFormat(chat=False, plain_template="{question}", end_target_with_eos=False)


def continuation_pairs(tokenizer, texts, fraction: float = 0.5, min_words: int = 6):
    """Each text cut at a word boundary into prompt (the first ``fraction`` of its words, at least
    two) and target (the rest, at least one word); texts shorter than ``min_words`` are skipped."""
    from trustedit.prompts import make_pairs

    qs, ans = [], []
    for t in texts:
        if isinstance(t, tuple):  # an explicit (prompt, continuation) pair
            qs.append(t[0])
            ans.append(t[1].strip())
            continue
        words = t.split()
        if len(words) < max(min_words, 3):
            continue
        cut = min(max(2, round(len(words) * fraction)), len(words) - 1)
        qs.append(" ".join(words[:cut]))
        ans.append(" ".join(words[cut:]))
    return make_pairs(tokenizer, continuation_format(), qs, ans)


# ---- the method -----------------------------------------------------------------------------------


def train_adapters(lm, cfg: ExtSubConfig, good=None, bad=None, stages=None, exclude_ids=()):
    """Train the expert (on ``good``) and the anti-expert (on ``bad``; None: the project's data,
    as ``cfg.data_source`` says). Texts are strings (cut into prompt and rest) or ``(prompt,
    continuation)`` pairs. ``exclude_ids``: RTP prompt ids never trained on (the evaluated ones).
    Returns ``(pos, neg, record)`` with the two adapters' low-rank deltas."""
    from contextlib import nullcontext

    from trustedit.methods.base import training_record
    from trustedit.methods.lora import target_modules, train_lora

    prov = {}
    if good is None or bad is None:
        if cfg.data_source == "rtp":
            g, b, prov = rtp_training_pairs(cfg.train_limit, cfg.seed, exclude_ids)
        elif cfg.data_source == "jigsaw+paradetox":
            g, b, prov = training_texts(cfg.train_limit, cfg.seed, cfg.normalize_text)
        else:
            from trustedit.errors import UsageError

            raise UsageError(f"data_source must be 'jigsaw+paradetox' or 'rtp', got {cfg.data_source!r}")
        good = g if good is None else good
        bad = b if bad is None else bad
    modules = target_modules(lm.model, cfg.targets)
    timer = stages or (lambda name: nullcontext())
    out, record = {}, {"data": prov, "modules": len(modules)}
    for side, texts in (("expert", good), ("anti_expert", bad)):
        pairs = continuation_pairs(lm.tokenizer, texts, cfg.prompt_fraction, cfg.min_words)
        t0 = time.time()
        with timer(f"train_{side}"):
            deltas, losses = train_lora(lm, pairs, modules, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout,
                                        lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps or None,
                                        batch_size=cfg.batch_size, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
                                        desc=f"ext-sub: {side}")
        out[side] = deltas
        record[side] = training_record(losses, pairs, t0)
    return out["expert"], out["anti_expert"], record


def patch_from(lm, pos, neg, cfg: ExtSubConfig, record: dict, how: str | None = None):
    """The Patch for one combination of the two trained adapters."""
    from trustedit.patch import Patch

    how = how or cfg.combine
    from trustedit.arch import arch_for

    conv1d = arch_for(lm.model).conv1d  # the architecture table knows how weights are stored
    deltas, per_module = combine_deltas(pos, neg, how, cfg.lam, cfg.eps, cfg.factor_rank, conv1d, cfg.scale)
    name = {"ext-sub": "ext-sub", "negation": "negation", "expert": "expert"}[how]
    patch = Patch(name, deltas)
    patch.manifest["training"] = {**record, "combine": how, "lambda": cfg.lam, "scale": cfg.scale, "eps": cfg.eps,
                                  "factor_rank": cfg.factor_rank, "per_module": per_module}
    return patch


@dataclass
class DetoxTrain:
    """Training data of Ext-Sub / negation: ``good`` (non-toxic) and ``bad`` (toxic) texts or
    ``(prompt, continuation)`` pairs; None reads the project's data (``data_source``), leaving out
    the RTP prompts in ``exclude_ids`` (those a job evaluates)."""

    good: list | None = None
    bad: list | None = None
    exclude_ids: tuple = ()

    def describe(self) -> dict:
        return {"name": "detox training text", "good": None if self.good is None else len(self.good),
                "bad": None if self.bad is None else len(self.bad), "excluded_rtp_prompts": len(self.exclude_ids)}


def job_train(lm, job) -> DetoxTrain:
    """Ext-Sub's training data in a job: the project's text minus every RTP prompt the job evaluates."""
    ids = set()
    for name in ("rtp", "extsub-greedy"):
        items = job.items.get(name)
        if items is None:
            continue
        sets = items.data.get("sets") or {"prompts": items.data.get("prompts", [])}
        ids.update(p.id for v in sets.values() for p in v)
        ids.update(p.id for p in items.data.get("validation", ()))  # a budget search's prompts: never trained on
    return DetoxTrain(exclude_ids=tuple(sorted(ids, key=str)))


def default_evaluated_ids(seed: int) -> tuple:
    """The RTP prompts the ``rtp`` and ``extsub-greedy`` suites evaluate at their default sizes for
    ``seed`` (toxic-first and random sets): what training must never see."""
    from trustedit.data.toxicity import load_rtp, select_rtp
    from trustedit.suites.rtp import RTPOptions

    from trustedit.data.toxicity import validation_rtp

    o, data = RTPOptions(), load_rtp()
    ids = {p.id for p in select_rtp(data, o.toxic_limit, seed, "toxic-first")}
    ids |= {p.id for p in select_rtp(data, o.random_limit, seed, "random")}
    ids |= {p.id for p in validation_rtp(data, ids, o.validation_prompts, seed)}
    return tuple(sorted(ids, key=str))


def fit(lm, data=None, cfg: ExtSubConfig | None = None, stages=None):
    """Train both adapters and combine them as ``cfg.combine`` says. ``data``: None (the project's
    toxic / non-toxic text), ``(non_toxic_texts, toxic_texts)`` or a :class:`DetoxTrain`. The
    patch carries the other combinations of the same two adapters as ``patch.variants``.

    With the project's RTP text (``data`` None, ``data_source="rtp"``), the prompts that the RTP
    suites evaluate at their default sizes are left out of training (:func:`default_evaluated_ids`),
    as a job leaves out exactly the prompts it evaluates (:func:`job_train`)."""
    return next(fit_sweep(lm, data, [cfg or ExtSubConfig()], stages))


SWEEPABLE = ("combine", "lam", "scale", "eps", "factor_rank")


def fit_sweep(lm, data, cfgs, stages=None):
    """One patch per config, in order. Configs that differ only in how the adapters combine
    (:data:`SWEEPABLE`) share one training of the two adapters; each patch equals
    ``fit(lm, data, cfg)`` for its config, variants included."""
    from trustedit.methods.base import differ_beyond

    cfgs = list(cfgs)
    if differ_beyond(cfgs, SWEEPABLE):
        for c in cfgs:
            yield fit(lm, data, c, stages)
        return
    cfg = cfgs[0]
    set_seed(cfg.seed)
    if isinstance(data, DetoxTrain):
        good, bad, exclude = data.good, data.bad, data.exclude_ids
    elif data is None:
        good = bad = None
        exclude = default_evaluated_ids(cfg.seed) if cfg.data_source == "rtp" else ()
    else:
        (good, bad), exclude = data, ()
    pos, neg, record = train_adapters(lm, cfg, good, bad, stages, exclude_ids=exclude)
    for c in cfgs:
        patch = patch_from(lm, pos, neg, c, record)
        patch.variants = {how: patch_from(lm, pos, neg, c, record, how) for how in ("expert", "negation", "ext-sub")
                          if how != c.combine}
        yield patch


def budget_grid(cfg: ExtSubConfig) -> list[tuple[str, dict]]:
    """Strengths a fluency budget chooses from, strongest first: λ (not for the expert alone) and the
    scale of the whole update. λ alone cannot reach the base model's fluency (λ = 0 is the expert
    alone, whose perplexity cost is the largest part, RESULTS §6), so the scale is searched too."""
    lams = (cfg.lam,) if cfg.combine == "expert" else (1.0, 2.0)
    out = []
    for scale in (1.0, 0.5, 0.25):
        for lam in lams:
            label = f"scale={scale}" if cfg.combine == "expert" else f"λ={lam} scale={scale}"
            out.append((label, {"lam": lam, "scale": scale}))
    return out


CITATION = ("Hu et al. 2024, Separate the Wheat from the Chaff: Model Deficiency Unlearning via Parameter-Efficient "
            "Modules Operation (AAAI 2024)")

METHOD = Method(
    name="ext-sub",
    config=ExtSubConfig,
    fit=fit,  # fit(lm, data=None, cfg, stages=None) -> Patch
    citation=CITATION,
    summary="expert (non-toxic) minus the deficiency of an anti-expert (toxic) LoRA, row by row",
    train="trustedit.safety.ext_sub:job_train",
    variants=("expert", "negation"),
    fit_sweep=fit_sweep,
    budget_grid=budget_grid,
)

NEGATION = Method(
    name="negation",
    config=NegationConfig,
    fit=fit,
    citation="Ilharco et al. 2023, Editing Models with Task Arithmetic (ICLR 2023); baseline in " + CITATION,
    summary="expert (non-toxic) minus the whole anti-expert (toxic) LoRA update",
    train="trustedit.safety.ext_sub:job_train",
    variants=("expert", "ext-sub"),
    fit_sweep=fit_sweep,
    budget_grid=budget_grid,
)
