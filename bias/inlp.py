"""INLP: Iterative Nullspace Projection (Ravfogel, Elazar, Gonen, Twiton & Goldberg, ACL 2020).

Train a linear classifier to predict a protected attribute from representations, project the
representations onto the nullspace of its weight vector, and repeat ``iterations`` times; the
final projection ``P = I - QQᵀ`` (Q: an orthonormal basis of every classifier's direction)
removes what the linear classifiers could use.

Choices here, documented:

* **representation**: the output of the MLP down projection of ``layer`` at the prompt's last
  token (the feed-forward output DAMA also edits), and the projection is applied to that same
  matrix, ``W_down <- P W_down``, so INLP is a reversible weight Patch like DAMA (low-rank
  ``B = -Q``, ``A = Qᵀ W``). The classifiers then see exactly the edited quantity: after the
  patch every classifier direction is absent from that layer's feed-forward output. (Projecting
  the residual stream instead cannot be written as an edit of one matrix, since every layer
  below writes into it.) The feed-forward bias (GPT-2) is constant and left alone;
* **data**: the DAMA training prompts ("The nurse said that"), bare (no context prefixes);
* **labels** ("he" vs "she" contexts): ``label=score`` (default) uses the sign of each prompt's
  stereotype score (positive: a "he" profession, negative: a "she" profession; 0 is dropped);
  ``label=model`` uses the base model's own log p(he) - log p(she) at the prompt, above or
  below its median over the prompts (a model usually prefers one word for nearly every prompt,
  so the sign alone would give one class), for word lists without scores;
* **classifiers**: scikit-learn ``LinearSVC`` (the INLP paper's choice for gender) or
  ``LogisticRegression``; features scaled by one global constant (directions are unchanged);
  held-out accuracy on a seeded split *by subject* (a profession is never in both halves);
* each classifier's direction is taken within the current nullspace (``P w``, which spans the
  same space as the paper's intersection of rowspace nullspaces).

``fit(lm, prompts, cfg, stages=None) -> Patch`` as :func:`trustedit.bias.dama.fit`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, opt, sample_items, set_seed


def _two_words(pair) -> str | None:
    """INLPConfig.pair: exactly two non-empty words."""
    if len(pair) != 2 or not all(isinstance(w, str) and w.strip() for w in pair):
        return "two words (e.g. he,she)"
    return None


@dataclass
class INLPConfig(MethodConfig):
    layer: float = opt(0.8, "Layer whose MLP output is classified and projected: an index, or a fraction of depth in [0,1).",
                       layer=True)
    iterations: int = opt(20, "Classifiers trained; each one's direction is projected out (Ravfogel et al. 2020).", ge=1)
    classifier: str = opt("svm", "'svm' (LinearSVC, the INLP paper's choice) or 'logreg' (LogisticRegression).",
                          choices=("svm", "logreg"))
    reg_c: float = opt(1.0, "Inverse regularisation strength C of the classifiers.", gt=0)
    label: str = opt("score", "Labels: 'score' (sign of the prompt's stereotype score, zeros dropped) or 'model' (the base model's log p(pair[0]) - log p(pair[1]) above or below its median).",
                     choices=("score", "model"))
    pair: list = opt(["he", "she"], "Attribute pair whose probabilities give the labels when label=model.",
                     check=_two_words)
    dev_fraction: float = opt(0.2, "Share of subjects held out to measure each classifier's accuracy (0: report training accuracy).", ge=0, lt=1)
    min_accuracy: float = opt(0.0, "Stop when a classifier's held-out accuracy falls below this (0: never stop early).", ge=0, le=1)
    max_prompts: int = opt(0, "Use at most this many prompts (0: all), a seeded sample.", ge=0)
    batch_size: int = opt(32, "Sequences per forward pass.", ge=1)


def _classifier(kind: str, C: float, seed: int):
    from trustedit.errors import UsageError

    if kind == "svm":
        from sklearn.svm import LinearSVC

        return LinearSVC(C=C, dual="auto", max_iter=20000, random_state=seed)
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=5000, random_state=seed)
    raise UsageError(f"classifier must be 'svm' or 'logreg', not {kind!r}")


def inlp_projection(X, y, *, iterations: int, classifier: str = "svm", C: float = 1.0, X_dev=None, y_dev=None,
                    min_accuracy: float = 0.0, seed: int = 0):
    """Iterative nullspace projection on numpy arrays ``X`` (n, d), labels ``y``.

    Returns ``(Q, record)``: Q (d, r) float64, an orthonormal basis of the removed directions
    (``P = I - QQᵀ``), and per-iteration accuracies (held-out ones when ``X_dev`` is given) plus
    ``accuracy_after``: a fresh classifier's accuracy on the fully projected data.
    """
    import numpy as np

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    scale = float(np.sqrt((X ** 2).mean())) or 1.0
    X = X / scale
    has_dev = X_dev is not None and y_dev is not None and len(y_dev)
    Xd = np.asarray(X_dev, dtype=np.float64) / scale if has_dev else X
    yd = np.asarray(y_dev) if has_dev else y
    d = X.shape[1]
    Q = np.zeros((d, 0))
    record = {"train_accuracy": [], "accuracy": [], "majority": float(np.bincount(np.unique(yd, return_inverse=True)[1]).max() / len(yd)),
              "held_out": bool(has_dev)}

    def project(A):
        return A - (A @ Q) @ Q.T

    for i in range(iterations):
        clf = _classifier(classifier, C, seed + i).fit(project(X), y)
        record["train_accuracy"].append(float(clf.score(project(X), y)))
        acc = float(clf.score(project(Xd), yd))
        record["accuracy"].append(acc)
        if min_accuracy and acc < min_accuracy:
            break
        W = project(np.atleast_2d(clf.coef_))  # directions within the current nullspace
        U, s, _ = np.linalg.svd(np.concatenate([Q, W.T], axis=1), full_matrices=False)
        Q = U[:, s > s.max() * 1e-10] if s.size else Q
    clf = _classifier(classifier, C, seed + iterations).fit(project(X), y)
    record["accuracy_after"] = float(clf.score(project(Xd), yd))
    record["rank"] = int(Q.shape[1])
    return Q, record


def _labels(lm, prompts, seqs, cfg: INLPConfig):
    """+1 / -1 per prompt (0: dropped)."""
    from trustedit.errors import UsageError

    if cfg.label == "score":
        return [1 if p.score > 0 else -1 if p.score < 0 else 0 for p in prompts]
    if cfg.label == "model":
        import torch

        from trustedit.bias.dama import last_layer_name, last_token_states, output_head, plain_format, target_token_ids

        if len(cfg.pair) != 2:
            raise UsageError(f"pair={cfg.pair}: expected two words")
        tids, _ = target_token_ids(lm.tokenizer, plain_format(), prompts[0].prompt, cfg.pair)
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        h = last_token_states(lm.model, last_layer_name(lm.model), seqs, what="output", batch_size=cfg.batch_size,
                              pad_id=pad, desc="inlp: labels")
        with torch.no_grad():
            logp = torch.log_softmax(output_head(lm.model)(h).float(), dim=-1)
        gap = logp[:, tids[0]] - logp[:, tids[1]]
        gap = (gap - gap.median()).tolist()  # relative: models lean to one word overall
        return [1 if g > 0 else -1 if g < 0 else 0 for g in gap]
    raise UsageError(f"label must be 'score' or 'model', not {cfg.label!r}")


def fit(lm, prompts=None, cfg: INLPConfig | None = None, stages=None):
    """Fit INLP on ``prompts`` (None: the DAMA training prompts) and return the Patch."""
    import random

    import numpy as np
    import torch

    from trustedit import arch
    from trustedit.bias.dama import _Timer, last_token_states, layer_of, plain_format, projection_delta
    from trustedit.bias.prompts import as_prompts, fingerprint, load_train_prompts
    from trustedit.errors import UsageError
    from trustedit.patch import Patch

    cfg = cfg or INLPConfig()
    set_seed(cfg.seed)
    t0 = time.time()
    timer = _Timer(stages, "inlp/")
    model, tok = lm.model, lm.tokenizer
    spec = arch.arch_for(model)
    L = layer_of(cfg.layer, arch.num_layers(model))
    all_prompts = as_prompts(prompts) if prompts is not None else load_train_prompts()
    prompts = sample_items(all_prompts, cfg.max_prompts, cfg.seed)
    fmt = plain_format()
    seqs = [fmt.prompt_ids(tok, p.prompt) for p in prompts]
    module = arch.layer_path(model, L, spec.down)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        with timer("labels"):
            labels = _labels(lm, prompts, seqs, cfg)
        with timer("representations"):
            H = last_token_states(model, module, seqs, what="output", batch_size=cfg.batch_size, pad_id=pad,
                                  desc=f"inlp: representations L{L}")
    finally:
        model.train(was_training)
    keep = [i for i, y in enumerate(labels) if y != 0]
    if len({labels[i] for i in keep}) < 2:
        raise UsageError("INLP needs prompts of both classes (check the scores or the label option)")
    subjects = sorted({prompts[i].subject for i in keep})
    random.Random(cfg.seed).shuffle(subjects)
    n_dev = int(round(cfg.dev_fraction * len(subjects))) if len(subjects) > 1 else 0
    dev_subjects = set(subjects[:n_dev])
    tr = [i for i in keep if prompts[i].subject not in dev_subjects]
    dv = [i for i in keep if prompts[i].subject in dev_subjects]
    Xall = H.double().cpu().numpy()
    y = np.array(labels)
    with timer("classifiers"):
        Q, rec = inlp_projection(Xall[tr], y[tr], iterations=cfg.iterations, classifier=cfg.classifier, C=cfg.reg_c,
                                 X_dev=Xall[dv] if dv else None, y_dev=y[dv] if dv else None,
                                 min_accuracy=cfg.min_accuracy, seed=cfg.seed)
    name = module + ".weight"
    weight = dict(model.named_parameters())[name]
    delta = projection_delta(weight, torch.from_numpy(Q).float(), spec.conv1d)
    patch = Patch("inlp", {name: delta})
    patch.manifest["training"] = {
        "layer": L, "rank": rec["rank"], "label": cfg.label, "classifier": cfg.classifier, "prompts": len(prompts),
        "prompts_available": len(all_prompts), "prompts_fingerprint": fingerprint(prompts), "train_examples": len(tr),
        "dev_examples": len(dv), "majority": rec["majority"], "accuracy": rec["accuracy"],
        "train_accuracy": rec["train_accuracy"], "accuracy_after": rec["accuracy_after"], "held_out": rec["held_out"],
        "timings_s": timer.seconds, "seconds": round(time.time() - t0, 2),
    }
    return patch


METHOD = Method(
    name="inlp",
    config=INLPConfig,
    fit=fit,  # fit(lm, prompts, cfg, stages=None) -> Patch
    citation="Ravfogel et al. 2020, Null It Out: Guarding Protected Attributes by Iterative Nullspace Projection (ACL 2020)",
    summary="project out linear classifiers' he/she directions from one MLP down-projection (iterative nullspace projection)",
)
