"""Scope-gated sanitation: SERAC (Mitchell et al., "Memory-Based Model Editing at Scale", ICML 2022)
adapted to knowledge sanitization.

SERAC keeps the edits out of the base model: a *scope classifier* decides whether an input is
about an edit, and in scope a *counterfactual model* answers; out of scope the base model answers,
untouched. Sanitation is the case where every edit has the same answer ("I don't know."), so:

* the scope classifier is fitted on the training split: forget questions (in scope) against retain
  questions (out of scope). SERAC trains a cross-encoder or an embedding-similarity classifier;
  with 80 forget questions, a small model is what the data supports: nearest-neighbour similarity
  to the forget questions (``classifier=knn``, the mean of the ``k`` highest cosine similarities;
  SERAC's embedding classifier with ``k=1``) or a logistic regression (``logreg``), on MiniLM
  sentence embeddings of the question (``features=minilm``) or on the model's own mean-pooled
  hidden states (``features=hidden``);
* the threshold is not SERAC's fixed 0.5: it is calibrated by ``folds``-fold cross-validation on the
  training split alone, so that at most ``max_over_refusal`` of the out-of-fold retain questions
  are in scope (the test split is never read);
* ``sanitation-scope``: the counterfactual is the refusal itself (its token ids, then EOS);
  ``sanitation-scope+lora``: the counterfactual is the model plus a LoRA adapter trained only on the
  in-scope (forget) questions, as SERAC trains its counterfactual model only on edits; the adapter
  acts only on sequences in scope.

The patch holds a :class:`trustedit.scope_gate.ScopeGate` (hooks, no weight change): apply and
revert are exact, it saves and loads like any patch, and ``patch export`` refuses it (merged
weights cannot express a decision taken at run time). See :mod:`trustedit.scope_gate` for what
the gate treats as the prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, opt, set_seed, training_record
from trustedit.methods.lora import LoraFields
from trustedit.scope_gate import CLASSIFIERS, FEATURES


@dataclass
class ScopeConfig(MethodConfig):
    features: str = opt("minilm", "Scope features: 'minilm' (sentence embedding of the question) or 'hidden' (the "
                        "model's own hidden states, mean-pooled over the prompt at `layer`).", choices=FEATURES)
    classifier: str = opt("knn", "Scope model: 'knn' (mean cosine similarity to the k nearest forget questions) or "
                          "'logreg' (logistic regression, forget vs retain).", choices=CLASSIFIERS)
    k: int = opt(3, "knn: number of nearest forget questions averaged (1: nearest-neighbour similarity).", ge=1)
    C: float = opt(0.1, "logreg: inverse regularisation strength.", gt=0)
    layer: float = opt(0.8, "hidden: decoder layer whose output is pooled (an index or a fraction of depth).",
                       layer=True)
    exemplars: str = opt("question+answer", "knn on minilm features: what each forget exemplar embeds: 'question', or "
                         "'question+answer' (the fact to forget, as SERAC's scope classifier reads the edit descriptor "
                         "with its answer); the input is always the question alone.",
                         choices=("question", "question+answer"))
    max_over_refusal: float = opt(0.05, "Calibration target: the share of (out-of-fold) training retain questions "
                                  "allowed in scope.", ge=0, lt=1)
    folds: int = opt(5, "Cross-validation folds of the calibration (training split only).", ge=2)
    batch_size: int = opt(16, "Batch size of the feature passes.", ge=1)


@dataclass
class ScopeLoraConfig(ScopeConfig, LoraFields):
    """The gate's options, the counterfactual adapter's shape (:class:`LoraFields`) and its schedule."""

    lr: float = opt(1e-3, "AdamW learning rate (higher than sanitation-lora's: the adapter only ever answers in "
                    "scope, so it has no retain answers to keep).", gt=0)
    epochs: int = opt(5, "Passes over the forget pairs.", ge=1)
    warmup_steps: int = opt(5, "Linear warm-up steps.", ge=0)
    lora_batch_size: int = opt(8, "Training batch size of the adapter (sequences).", ge=1)


def features(lm, prompts, cfg: ScopeConfig, frame, encoder=None):
    """Scope features of prompts (token-id lists): the same functions the gate runs at inference."""
    from trustedit import scope_gate

    if cfg.features == "minilm":
        return scope_gate.minilm_features(encoder, lm.tokenizer, prompts, frame)
    return scope_gate.hidden_features(lm.model, prompts, gate_layer(lm.model, cfg), cfg.batch_size,
                                      desc="scope features")


def exemplar_features(lm, train, cfg: ScopeConfig, frame, encoder):
    """The forget exemplars' features when they differ from the forget questions' (knn on MiniLM
    with ``exemplars=question+answer``: the question followed by its forgotten answer), else None."""
    from trustedit.errors import UsageError
    from trustedit.scope_gate import question_text

    if not (cfg.features == "minilm" and cfg.classifier == "knn" and cfg.exemplars == "question+answer"):
        return None
    answers = list(getattr(train, "forget_answers", None) or [])
    if len(answers) != len(train.forget):
        raise UsageError("sanitation-scope: exemplars=question+answer needs the forget questions' answers "
                         "(set exemplars=question to use the questions alone)")
    return encoder.encode([f"{question_text(lm.tokenizer, x.prompt, frame)} {a}".strip()
                           for x, a in zip(train.forget, answers)])


def gate_layer(model, cfg) -> int:
    from trustedit import arch
    from trustedit.methods.base import layer_index

    return layer_index(cfg.layer, arch.num_layers(model))


def fit_gate(lm, train, cfg: ScopeConfig):
    """The scope model and its calibration: ``(ScopeGate, record)``."""
    from trustedit.errors import TrusteditError
    from trustedit.prompts import PromptFormat
    from trustedit.scope_gate import ScopeGate, calibrate, frame_of, scope_params

    if not train.forget or not train.retain:
        raise TrusteditError("sanitation-scope needs forget and retain training questions")
    refusal = list(train.forget[0].target)
    if any(list(x.target) != refusal for x in train.forget):
        raise TrusteditError("sanitation-scope: the forget questions' targets differ (one refusal is expected)")
    frame = frame_of(lm.tokenizer, PromptFormat())
    encoder = None
    if cfg.features == "minilm":
        from trustedit.embeddings import SentenceEncoder

        encoder = SentenceEncoder()
    t0 = time.time()
    F = features(lm, [x.prompt for x in train.forget], cfg, frame, encoder)
    R = features(lm, [x.prompt for x in train.retain], cfg, frame, encoder)
    bank = exemplar_features(lm, train, cfg, frame, encoder)
    t_feat = time.time() - t0
    center = cfg.features == "hidden"  # hidden states share a large common direction; MiniLM's cosine is used as is
    cal = calibrate(cfg.classifier, F, R, target=cfg.max_over_refusal, folds=cfg.folds, k=cfg.k, C=cfg.C,
                    seed=cfg.seed, center=center, bank=bank)
    params = scope_params(cfg.classifier, F if bank is None else bank, R, k=cfg.k, C=cfg.C, seed=cfg.seed,
                          center=center)
    gate = ScopeGate(cfg.features, cfg.classifier, params, cal["threshold"], refusal, int(refusal[-1]), cfg.k,
                     gate_layer(lm.model, cfg) if cfg.features == "hidden" else None,
                     (list(frame[0]), list(frame[1])) if cfg.features == "minilm" else ((), ()),
                     encoder.fingerprint if encoder is not None else None)
    record = {"calibration": {**cal, "split": "train (forget vs retain), cross-validated", "forget": len(F),
                              "retain": len(R)},
              "exemplars": "question+answer" if bank is not None else "question",
              "features_seconds": round(t_feat, 2)}
    if encoder is not None:
        record["encoder"] = encoder.describe()
    return gate, record


def fit(lm, train, cfg: ScopeConfig, stages=None):
    """``train``: forget and retain pairs (:class:`trustedit.suites.sanitation.TrainPairs`)."""
    from trustedit.patch import Patch

    set_seed(cfg.seed)
    t0 = time.time()
    gate, record = fit_gate(lm, train, cfg)
    patch = Patch("sanitation-scope", {}, gate=gate)
    patch.manifest["training"] = {**record, "seconds": round(time.time() - t0, 2)}
    return patch


def fit_lora(lm, train, cfg: ScopeLoraConfig, stages=None):
    """The gate, and a LoRA counterfactual trained on the forget pairs only."""
    from trustedit import arch
    from trustedit.methods.lora import target_modules, train_lora
    from trustedit.patch import Delta, Patch

    set_seed(cfg.seed)
    t0 = time.time()
    gate, record = fit_gate(lm, train, cfg)
    # hidden features: the decision is known only after the gate layer, so the adapter starts above it
    first = gate.layer + 1 if gate.layer is not None else 0
    if first >= arch.num_layers(lm.model):
        from trustedit.errors import UsageError

        raise UsageError(f"sanitation-scope+lora: the gate pools the top layer ({gate.layer}), so no layer is left "
                         "above it for the adapter; set a lower layer")
    modules = target_modules(lm.model, cfg.targets, first)
    deltas, losses = train_lora(lm, list(train.forget), modules, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout,
                                lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.lora_batch_size,
                                warmup_steps=cfg.warmup_steps, seed=cfg.seed, desc="scope counterfactual")
    conv1d = arch.arch_for(lm.model).conv1d
    for name in modules:
        d = deltas[name + ".weight"]
        A, B = d.tensors["A"], d.tensors["B"]
        if conv1d:  # train_lora returns the parameter's orientation; the hook needs the Linear one
            A, B = B.t().contiguous(), A.t().contiguous()
        gate.adapters[name] = Delta("lowrank", {"A": A, "B": B}, d.scale)
    patch = Patch("sanitation-scope+lora", {}, gate=gate)
    patch.manifest["training"] = {**record, **training_record(losses, train.forget, t0, modules=len(modules),
                                                              first_adapted_layer=first)}
    return patch


METHOD = Method(
    name="sanitation-scope",
    config=ScopeConfig,
    fit=fit,
    citation="Mitchell et al. 2022, Memory-Based Model Editing at Scale (SERAC, ICML); adapted to knowledge "
             "sanitation (Ishibashi & Shimodaira 2023)",
    summary="scope gate (SERAC): questions the scope model puts near the forget set -> \"I don't know.\", every "
            "other input -> the base model, bit for bit; threshold calibrated on the training split",
    train="trustedit.suites.sanitation:train_pairs",
)

METHOD_LORA = Method(
    name="sanitation-scope+lora",
    config=ScopeLoraConfig,
    fit=fit_lora,
    citation="Mitchell et al. 2022 (SERAC) with a LoRA counterfactual model (Ishibashi & Shimodaira 2023)",
    summary="the sanitation-scope gate, answering in scope with a LoRA adapter trained on the forget questions only",
    train="trustedit.suites.sanitation:train_pairs",
)
