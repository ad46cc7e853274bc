"""Scope gates: the scope decision kept apart from the weights (SERAC, Mitchell et al., ICML 2022).

A :class:`ScopeGate` rides on a :class:`~trustedit.patch.Patch` (``patch.gate``). Applying the
patch installs forward hooks on the model; reverting removes them. The gate never writes a weight,
so revert is bit-exact by construction.

* **Scope model.** Once per sequence, at the end of its prompt, the gate computes the prompt's
  features and a score, and compares the score with a threshold calibrated on training data.
  Features (``features``):

  - ``hidden``: the mean, over the prompt tokens, of one decoder layer's output (the model's own
    states; the gate needs nothing outside the model);
  - ``minilm``: the all-MiniLM-L6-v2 embedding of the question the prompt wraps (the prompt
    format's fixed prefix and suffix, recorded at fit time, are cut off; a prompt in another format
    is embedded whole).

  Scores (``classifier``): ``knn`` (mean cosine similarity to the ``k`` nearest forget examples;
  ``k=1`` is plain nearest-neighbour similarity) or ``logreg`` (the decision function of a logistic
  regression, forget vs retain, on standardised features).
* **Counterfactual.** In scope, the sequence is answered with the refusal: its token ids (the
  prompt format's target ids, ending with EOS), then EOS. With ``adapters`` (SERAC's trained
  counterfactual model, ``sanitation-scope+lora``), it is answered by the model with those low-rank
  adapters added to its projections instead. Out of scope, the hooks return every output untouched:
  the base model's logits, bit for bit.

**What "the prompt" is.** A causal LM's forward pass does not say where a prompt ends, so the gate
follows how every decoder is driven (``generate`` and trustedit's own passes): a call on a fresh
sequence, and every further multi-token call before the first single-token call, reads the prompt;
the decision is (re)taken at the end of each such call, on everything read so far. The first
single-token call (the second generated token) fixes it: from then on, every token is an answer
token, and a token's offset into the answer is its position minus the position of the last prompt
token. The gate's per-row state lives on the KV cache object (attribute ``_trustedit_scope``), so
a cache that is copied (a shared prefix expanded to a batch) carries it along. Consequences:

* a single pass without a cache (perplexity, multiple-choice likelihoods, teacher forcing of
  prompt + target in one call) is a prompt: only its last position can change (it becomes the
  refusal's first token for a sequence in scope); everything the pass scores before that is the
  base model's;
* teacher forcing of a target on the generation's cache (:func:`trustedit.prompts.generate` with
  ``targets``) is scored against the counterfactual, as KnowEdit's Edit Succ. and locality need;
* with adapters, prompt tokens read before the decision (a shared prefix computed alone) were read
  by the base model; in the hidden-state variant, the adapters act only on layers above the gate's
  layer, since the decision is known only there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from trustedit.errors import TrusteditError
from trustedit.runtime import RuntimeComponent, keep_on_caches, saved_fields

FORCED_OTHER = -1.0e4  # logit of every token but the forced one (finite: log-probs stay finite)
STATE_ATTR = "_trustedit_scope"
FEATURES = ("minilm", "hidden")
CLASSIFIERS = ("knn", "logreg")


# ---- features (one function for training and inference) ---------------------------------------

def frame_of(tokenizer, fmt) -> tuple[list[int], list[int]]:
    """The token ids a prompt format puts before and after every question: the common prefix and
    suffix of two prompts with different questions."""
    a = fmt.prompt_ids(tokenizer, "What is the capital of Peru?")
    b = fmt.prompt_ids(tokenizer, "Who wrote Hamlet")
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    m = 0
    while m < min(len(a), len(b)) - n and a[-1 - m] == b[-1 - m]:
        m += 1
    return a[:n], (a[len(a) - m:] if m else [])


def question_text(tokenizer, ids: list[int], frame) -> str:
    """The text a prompt wraps: ``ids`` without the frame's prefix and suffix (when both are
    there), decoded without special tokens."""
    pre, suf = frame
    if len(ids) > len(pre) + len(suf) and ids[:len(pre)] == pre and (not suf or ids[-len(suf):] == suf):
        ids = ids[len(pre):len(ids) - len(suf)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def layer_module(model, layer: int):
    from trustedit import arch

    return arch.layers(model)[layer]


def hidden_features(model, prompts: list[list[int]], layer: int, batch_size: int = 16, desc="features"):
    """Mean of decoder layer ``layer``'s output over each prompt's tokens (fp32, CPU), from one
    forward pass per batch (right padding, masked)."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    out = [None] * len(prompts)
    mod = layer_module(model, layer)
    got = {}
    h = mod.register_forward_hook(lambda m, i, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    try:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        with torch.inference_mode():
            for s in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
                idx = order[s:s + batch_size]
                width = max(len(prompts[i]) for i in idx)
                ids = torch.zeros((len(idx), width), dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for j, i in enumerate(idx):
                    ids[j, :len(prompts[i])] = torch.tensor(prompts[i])
                    mask[j, :len(prompts[i])] = 1
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                      logits_to_keep=1)
                hs = got["h"].float()
                m = mask.to(hs.device).unsqueeze(-1).to(hs.dtype)
                feats = ((hs * m).sum(1) / m.sum(1)).cpu()
                for j, i in enumerate(idx):
                    out[i] = feats[j]
    finally:
        h.remove()
    return torch.stack(out) if out else torch.zeros((0, model.config.hidden_size))


def minilm_features(encoder, tokenizer, prompts: list[list[int]], frame):
    return encoder.encode([question_text(tokenizer, p, frame) for p in prompts])


# ---- the scope model (pure steps) --------------------------------------------------------------

def knn_scores(bank, feats, k: int, center=None):
    """Mean cosine similarity of each row of ``feats`` to its ``k`` nearest rows of ``bank``."""
    import torch

    if center is not None:
        bank, feats = bank - center, feats - center
    bank = torch.nn.functional.normalize(bank.float(), dim=1)
    feats = torch.nn.functional.normalize(feats.float(), dim=1)
    sims = feats @ bank.T
    return sims.topk(min(k, bank.shape[0]), dim=1).values.mean(1)


def fit_logreg(forget, retain, C: float, seed: int):
    """``(w, b, mu, sd)`` of a class-balanced logistic regression (forget = 1) on standardised features."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    X = torch.cat([forget, retain]).double().numpy()
    y = np.r_[np.ones(len(forget)), np.zeros(len(retain))]
    mu, sd = X.mean(0), X.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=5000, class_weight="balanced", random_state=seed).fit((X - mu) / sd, y)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return {"w": f(clf.coef_[0]), "b": f(clf.intercept_), "mu": f(mu), "sd": f(sd)}


def logreg_scores(params, feats):
    return ((feats.float() - params["mu"]) / params["sd"]) @ params["w"] + params["b"]


def scope_params(classifier: str, forget, retain, *, k: int, C: float, seed: int, center: bool) -> dict:
    """The tensors of a fitted scope model."""
    if classifier == "knn":
        out = {"bank": forget.float().contiguous()}
        if center:
            import torch

            out["center"] = torch.cat([forget, retain]).float().mean(0)
        return out
    return fit_logreg(forget, retain, C, seed)


def scope_scores(classifier: str, params: dict, feats, k: int):
    if classifier == "knn":
        return knn_scores(params["bank"], feats, k, params.get("center"))
    return logreg_scores(params, feats)


def out_of_fold_scores(classifier: str, forget, retain, *, folds: int, k: int, C: float, seed: int, center: bool,
                       bank=None):
    """Scope scores of every training example from a model fitted without its fold (stratified
    ``folds``-fold split, seeded): ``(forget scores, retain scores, folds used)`` as numpy arrays.
    ``bank`` (knn): the forget exemplars' own features, row for row with ``forget`` (e.g. question
    + answer), used as the neighbours while ``forget`` (the questions) is what is scored."""
    import numpy as np
    import torch
    from sklearn.model_selection import StratifiedKFold

    X = torch.cat([forget, retain])
    y = np.r_[np.ones(len(forget)), np.zeros(len(retain))]
    folds = min(folds, len(forget), len(retain))
    if folds < 2:
        raise TrusteditError(f"calibration needs at least 2 forget and 2 retain training examples "
                             f"(got {len(forget)} and {len(retain)})")
    oof = np.zeros(len(X))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        tr_f = torch.as_tensor(tr[y[tr] == 1]); tr_r = torch.as_tensor(tr[y[tr] == 0])  # noqa: E702
        exemplars = X[tr_f] if bank is None else bank[tr_f]
        params = scope_params(classifier, exemplars, X[tr_r], k=k, C=C, seed=seed, center=center)
        oof[te] = scope_scores(classifier, params, X[torch.as_tensor(te)], k).double().numpy()
    return oof[y == 1], oof[y == 0], folds


def threshold_at(oof_forget, oof_retain, target: float, folds: int) -> dict:
    """The threshold above which at most ``target`` of the out-of-fold retain scores lie, and the
    calibration record (the out-of-fold rates and ROC-AUC it implies, and the scores themselves)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    f, r = np.asarray(oof_forget, dtype=float), np.asarray(oof_retain, dtype=float)
    thr = float(np.quantile(r, 1 - target, method="higher")) if target > 0 else float(r.max())
    return {"threshold": thr, "target_over_refusal": target, "folds": folds,
            "cv_over_refusal": float(np.mean(r > thr)), "cv_flag_rate_forget": float(np.mean(f > thr)),
            "cv_roc_auc": float(roc_auc_score(np.r_[np.ones(len(f)), np.zeros(len(r))], np.r_[f, r])),
            "oof_forget": f.tolist(), "oof_retain": r.tolist()}


def calibrate(classifier: str, forget, retain, *, target: float, folds: int, k: int, C: float, seed: int,
              center: bool, bank=None) -> dict:
    """Cross-validated calibration on the training features alone: :func:`out_of_fold_scores`,
    then :func:`threshold_at` the ``target`` over-refusal."""
    f, r, used = out_of_fold_scores(classifier, forget, retain, folds=folds, k=k, C=C, seed=seed, center=center,
                                    bank=bank)
    return threshold_at(f, r, target, used)


# ---- the gate ----------------------------------------------------------------------------------

@dataclass
class _Seq:
    """Per-row state of the sequences behind one KV cache."""

    tokens: list  # prompt token ids read so far, per row
    inscope: object  # bool tensor (B,)
    end: object  # long tensor (B,): position of each row's last prompt token
    hsum: object = None  # float tensor (B, d): running sum of the gate layer's output (hidden)
    hcount: object = None  # float tensor (B,)
    decided: bool = False
    answering: bool = False

    @classmethod
    def fresh(cls, b: int):
        import torch

        return cls([[] for _ in range(b)], torch.zeros(b, dtype=torch.bool), torch.full((b,), -1, dtype=torch.long))

    def expand(self, b: int) -> "_Seq":
        """A one-row state (a shared prefix) repeated for ``b`` rows."""
        rep = lambda t: None if t is None else t.repeat(b, *([1] * (t.dim() - 1)))  # noqa: E731
        return _Seq([list(self.tokens[0]) for _ in range(b)], rep(self.inscope), rep(self.end), rep(self.hsum),
                    rep(self.hcount), self.decided, self.answering)


@dataclass
class ScopeGate(RuntimeComponent):
    features: str  # minilm | hidden
    classifier: str  # knn | logreg
    params: dict  # the scope model's tensors
    threshold: float
    refusal: list  # token ids of the counterfactual answer (ending with EOS)
    eos: int
    k: int = 3
    layer: int | None = None  # hidden: decoder layer whose output is pooled
    frame: tuple = ((), ())  # minilm: the prompt format's prefix and suffix ids
    encoder_fingerprint: str | None = None  # minilm: the encoder the features came from
    adapters: dict = field(default_factory=dict)  # module name -> lowrank Delta (SERAC's counterfactual model)
    _handles: list = field(default_factory=list, repr=False)
    _encoder: object = field(default=None, repr=False)
    _tokenizer: object = field(default=None, repr=False)
    _now: dict = field(default_factory=dict, repr=False)  # the running call: its state and rows in scope
    stats: dict = field(default_factory=lambda: {"decisions": 0, "in_scope": 0, "seconds": 0.0}, repr=False)

    # ---- persistence ---------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"kind": "scope", "features": self.features, "classifier": self.classifier, "threshold": self.threshold,
                "refusal": list(self.refusal), "eos": self.eos, "k": self.k, "layer": self.layer,
                "frame": [list(self.frame[0]), list(self.frame[1])], "encoder_fingerprint": self.encoder_fingerprint,
                "params": sorted(self.params), "adapters": {n: {"scale": d.scale} for n, d in self.adapters.items()}}

    def tensors(self) -> dict:
        out = {f"gate.{k}": v.detach().cpu().contiguous() for k, v in self.params.items()}
        for i, (name, d) in enumerate(sorted(self.adapters.items())):
            out[f"gate.adapter{i}.A"] = d.tensors["A"].detach().cpu().contiguous()
            out[f"gate.adapter{i}.B"] = d.tensors["B"].detach().cpu().contiguous()
        return out

    @classmethod
    def from_saved(cls, where: str, info, tensors: dict) -> "ScopeGate":
        from trustedit.patch import Delta

        if not isinstance(info, dict):
            raise TrusteditError(f"{where}: field 'gate' must be an object")
        with saved_fields(where):
            feats, clf = info["features"], info["classifier"]
            if feats not in FEATURES or clf not in CLASSIFIERS:
                raise TrusteditError(f"{where}: gate features {feats!r} / classifier {clf!r} unknown")
            params = {k: tensors[f"gate.{k}"] for k in info["params"]}
            adapters = {}
            for i, (name, a) in enumerate(sorted(info.get("adapters", {}).items())):
                adapters[name] = Delta("lowrank", {"A": tensors[f"gate.adapter{i}.A"], "B": tensors[f"gate.adapter{i}.B"]},
                                       float(a["scale"]))
            thr = float(info["threshold"])
            frame = info.get("frame") or [[], []]
            return cls(feats, clf, params, thr, [int(t) for t in info["refusal"]], int(info["eos"]), int(info.get("k", 3)),
                       info.get("layer"), (list(frame[0]), list(frame[1])), info.get("encoder_fingerprint"), adapters)

    # ---- install / remove ----------------------------------------------------------------------

    def install(self, model) -> None:
        """Register the hooks (all or nothing)."""
        from trustedit import arch

        if self.installed:
            raise TrusteditError("the scope gate is already installed")
        mods = dict(model.named_modules())
        missing = [n for n in self.adapters if n not in mods]
        if missing:
            raise TrusteditError(f"the gate's adapters name modules the model lacks: {missing[:3]}")
        if self.features == "hidden" and not (self.layer is not None and 0 <= self.layer < arch.num_layers(model)):
            raise TrusteditError(f"the gate pools layer {self.layer}, the model has {arch.num_layers(model)} layers")
        if self.features == "minilm":
            self._load_minilm(model)
        makers = [lambda: model.register_forward_pre_hook(self._pre, with_kwargs=True),
                  lambda: model.register_forward_hook(self._post, with_kwargs=True)]
        if self.features == "hidden":
            makers.append(lambda: layer_module(model, self.layer).register_forward_hook(self._layer_hook))
        makers += [lambda name=name: mods[name].register_forward_hook(self._adapter_hook(name)) for name in self.adapters]
        self._register(*makers)

    def _forget(self) -> None:
        self._now = {}

    def _load_minilm(self, model):
        from trustedit.embeddings import SentenceEncoder

        tok = model.__dict__.get("_trustedit_tokenizer")
        if tok is None:
            raise TrusteditError("a MiniLM scope gate needs the model's tokenizer: load the model with "
                                 "trustedit.models.load_model")
        if self._encoder is None:
            enc = SentenceEncoder()
            if self.encoder_fingerprint and enc.fingerprint != self.encoder_fingerprint:
                raise TrusteditError(f"the gate was fitted with sentence encoder {self.encoder_fingerprint}, the "
                                     f"installed one is {enc.fingerprint}")
            self._encoder = enc
        self._tokenizer = tok

    # ---- hooks ---------------------------------------------------------------------------------
    def _pre(self, module, args, kwargs):
        import torch

        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            if self.features == "minilm":
                raise TrusteditError("the MiniLM scope gate needs input_ids (it reads the prompt's tokens)")
            emb = kwargs.get("inputs_embeds")
            b, t = emb.shape[:2]
        else:
            b, t = ids.shape
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        st = getattr(cache, STATE_ATTR, None) if cache is not None and past > 0 else None
        if st is not None and len(st.tokens) != b:
            st = st.expand(b) if len(st.tokens) == 1 else None
        if st is None:
            st = _Seq.fresh(b)
        mask = kwargs.get("attention_mask")
        cur = mask[:, -t:].to("cpu").bool() if mask is not None else torch.ones((b, t), dtype=torch.bool)
        pos = kwargs.get("position_ids")
        if pos is not None:
            pos = pos.to("cpu").long().expand(b, -1)[:, -t:]
        elif mask is not None:
            pos = (mask.to("cpu").long().cumsum(-1) - 1)[:, -t:]
        else:
            pos = (past + torch.arange(t)).expand(b, -1)
        answering = st.answering or (st.decided and t == 1)
        self._now = {"state": st, "answering": answering, "pos": pos, "cur": cur, "cache": cache,
                     "mask": st.inscope if answering else None}
        if not answering:
            last = torch.where(cur, pos, torch.full_like(pos, -1)).max(1).values
            st.end = torch.maximum(st.end, last)
            if ids is not None:
                rows = ids.to("cpu")
                for r in range(b):
                    st.tokens[r].extend(rows[r][cur[r]].tolist())
            if self.features == "minilm":
                t0 = time.perf_counter()
                texts = [question_text(self._tokenizer, toks, self.frame) for toks in st.tokens]
                feats = self._encoder.encode(texts, progress=False)
                self._decide(st, feats)
                self.stats["seconds"] += time.perf_counter() - t0
                self._now["mask"] = st.inscope
        return None

    def _decide(self, st: _Seq, feats) -> None:
        scores = scope_scores(self.classifier, self.params, feats, self.k)
        st.inscope = (scores > self.threshold).cpu()
        st.decided = True
        self.stats["decisions"] += len(scores)
        self.stats["in_scope"] += int(st.inscope.sum())

    def _layer_hook(self, module, args, output):
        now = self._now
        if not now or now["answering"]:
            return None
        t0 = time.perf_counter()
        st = now["state"]
        h = (output[0] if isinstance(output, tuple) else output).detach().float().cpu()
        m = now["cur"].unsqueeze(-1).to(h.dtype)
        s, c = (h * m).sum(1), m.sum(1).squeeze(-1)
        st.hsum = s if st.hsum is None else st.hsum + s
        st.hcount = c if st.hcount is None else st.hcount + c
        self._decide(st, st.hsum / st.hcount.clamp(min=1).unsqueeze(-1))
        now["mask"] = st.inscope
        self.stats["seconds"] += time.perf_counter() - t0
        return None

    def _adapter_hook(self, name):
        d = self.adapters[name]

        def hook(module, args, output):
            mask = self._now.get("mask") if self._now else None
            if mask is None or not bool(mask.any()):
                return None
            x = args[0]
            A = d.tensors["A"].to(device=x.device, dtype=x.dtype)
            B = d.tensors["B"].to(device=x.device, dtype=x.dtype)
            extra = (x @ A.T) @ B.T * d.scale
            m = mask.to(device=output.device, dtype=output.dtype).view(-1, *([1] * (output.dim() - 1)))
            return output + extra * m
        return hook

    def _post(self, module, args, kwargs, output):
        now, self._now = self._now, {}
        if not now:
            return None
        st = now["state"]
        keep_on_caches(output, now["cache"], STATE_ATTR, st)
        if now["answering"]:
            st.answering = True
        if self.adapters or not bool(st.inscope.any()):
            return None
        logits = output.logits
        import torch

        pos, cur = now["pos"], now["cur"]
        n = logits.shape[1]
        pos, cur = pos[:, -n:], cur[:, -n:]
        rows, cols, toks = [], [], []
        for r in torch.nonzero(st.inscope).flatten().tolist():
            if now["answering"]:
                for c in torch.nonzero(cur[r]).flatten().tolist():
                    off = int(pos[r, c]) - int(st.end[r])
                    if off >= 1:
                        rows.append(r); cols.append(c)  # noqa: E702
                        toks.append(self.refusal[off] if off < len(self.refusal) else self.eos)
            else:
                valid = torch.nonzero(cur[r]).flatten()
                if len(valid):
                    rows.append(r); cols.append(int(valid[-1])); toks.append(self.refusal[0])  # noqa: E702
        if not rows:
            return None
        forced = logits.clone()
        r_t, c_t = torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device)
        forced[r_t, c_t] = FORCED_OTHER
        forced[r_t, c_t, torch.tensor(toks, device=logits.device)] = 0.0
        output.logits = forced
        return output
