"""Editing by context: an edit memory whose facts are put before the model's input while it runs.

One runtime component (:class:`ContextEditor`, carried by a :class:`~trustedit.patch.Patch` as
``patch.gate``) serves the two editors that resort to external knowledge:

* **IKE** (Zheng et al., EMNLP 2023, :mod:`trustedit.methods.ike`): every input is read after the
  retrieved new fact and ``k`` demonstrations (copy / update / retain) from a training split;
* **SERAC** (Mitchell et al., ICML 2022, :mod:`trustedit.methods.serac`): a scope classifier decides
  whether an input is about a stored edit; in scope, the counterfactual model (here the base model
  prompted with the retrieved edit) answers; out of scope, the base model does, bit for bit.

**Retrieval.** Facts and queries are embedded with the all-MiniLM-L6-v2 encoder (loaded once per
process, :func:`encoder`); a query's nearest fact is the one of highest cosine similarity. The query
is the text of the prompt the model reads (decoded, special tokens dropped).

**How the context reaches the model.** Applying the patch registers a forward pre-hook and a forward
hook on the model; reverting removes them (no weight is written, so revert is bit-exact). The
model's own forward always runs on the caller's batch unchanged; for the rows that take a context
the hook runs a second pass, the *counterfactual*, on ``context + prompt`` (left-padded, positions
from its own mask) and writes its logits into those rows of the output. Rows without a context keep
the base model's logits, bit for bit, whatever the batch holds.

**What "the prompt" is** follows :mod:`trustedit.scope_gate`: a call on a fresh sequence, and every
further multi-token call before the first single-token call, reads the prompt; later calls (greedy
decoding, teacher forcing of a target on the generation's cache, :func:`trustedit.prompts.generate`
with ``targets``) continue it, and the counterfactual continues on its own KV cache (kept with the
caller's cache object, attribute ``_trustedit_context``), with the caller's attention mask over the
continuation (so positions the caller masks out stay masked). A single pass without a cache (a
perplexity or multiple-choice pass) is read whole as a prompt: its retrieval query is the whole
sequence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from trustedit.errors import TrusteditError
from trustedit.runtime import RuntimeComponent, keep_on_caches, saved_fields

STATE_ATTR = "_trustedit_context"
KINDS = ("ike", "serac")
_ENCODER = {}


def encoder():
    """The MiniLM sentence encoder, loaded once per process."""
    from trustedit.embeddings import SentenceEncoder

    if "minilm" not in _ENCODER:
        _ENCODER["minilm"] = SentenceEncoder()
    return _ENCODER["minilm"]


def embed(texts: list[str]):
    """Unit-norm MiniLM embeddings (fp32, CPU), one row per text."""
    import torch

    if not texts:
        return torch.zeros((0, 384))
    e = encoder().encode(list(texts), progress=False)
    return torch.nn.functional.normalize(torch.as_tensor(e).float(), dim=1)


def norm_text(s: str) -> str:
    return " ".join(s.lower().split())


@dataclass
class Fact:
    """One stored edit: its prompt and new target (the fact's text is ``prompt target``)."""

    prompt: str
    target: str
    demos: list = field(default_factory=list)  # IKE: the demonstration texts retrieved for it, most similar last
    copy: bool = False  # SERAC: the fact also shown once as its own copy demonstration, before it

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.target}"


def fact_line(f: Fact) -> str:
    return f"New Fact: {f.text}\n"


@dataclass
class _Rows:
    """Per-row state of the sequences behind one KV cache."""

    tokens: list  # prompt token ids read so far, per row
    ctx: list  # per row: the context's token ids, or None (out of scope)
    decided: bool = False
    answering: bool = False
    cf: object = None  # the counterfactual's KV cache (rows in scope only)
    cf_rows: list = field(default_factory=list)  # outer row index of each counterfactual row
    cf_mask: object = None  # (B', L) mask of the counterfactual's prompt pass
    outer_width: int = 0  # the caller's mask length at the end of the prompt

    @classmethod
    def fresh(cls, b: int) -> "_Rows":
        return cls([[] for _ in range(b)], [None] * b)


@dataclass
class ContextEditor(RuntimeComponent):
    kind: str  # ike | serac
    facts: list  # [Fact]
    keys: object  # (F, 384) unit-norm MiniLM embeddings of the facts' retrieval texts
    threshold: float | None = None  # serac: in scope iff cosine similarity to the nearest fact > threshold
    encoder_fingerprint: str | None = None
    info: dict = field(default_factory=dict)  # how it was built (calibration, demo pool), for the manifest
    _handles: list = field(default_factory=list, repr=False)
    _model: object = field(default=None, repr=False)
    _tok: object = field(default=None, repr=False)
    _inner: bool = field(default=False, repr=False)
    _now: dict = field(default_factory=dict, repr=False)
    stats: dict = field(default_factory=lambda: {"decisions": 0, "in_scope": 0, "seconds": 0.0}, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TrusteditError(f"context editor kind {self.kind!r} unknown (known: {', '.join(KINDS)})")

    # ---- the decision and the context (pure given the embeddings) ------------------------------
    def choose(self, queries: list[str]) -> list[tuple[int | None, float]]:
        """For each query, ``(fact index or None, similarity)``: the nearest fact; SERAC keeps it only
        above its threshold (IKE always keeps it)."""
        if not self.facts or not queries:
            return [(None, 0.0)] * len(queries)
        sims = embed(queries) @ self.keys.float().T
        best, idx = sims.max(1)
        out = []
        for s, i in zip(best.tolist(), idx.tolist()):
            keep = self.kind == "ike" or (self.threshold is not None and s > self.threshold)
            out.append((int(i) if keep else None, float(s)))
        return out

    def context_text(self, fact: Fact, query: str) -> str:
        """The text put before ``query``: the fact's demonstrations that do not contain the query,
        then the fact itself."""
        q = norm_text(query)
        demos = [d for d in fact.demos if not q or q not in norm_text(d)]
        if fact.copy:  # the edit itself, not a test prompt: the counterfactual is told to repeat it
            demos.append(fact_line(fact) + fact.text)
        return "".join(d + "\n\n" for d in demos) + fact_line(fact)

    # ---- persistence ---------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"kind": self.kind, "threshold": self.threshold, "encoder_fingerprint": self.encoder_fingerprint,
                "facts": [{"prompt": f.prompt, "target": f.target, "demos": list(f.demos), "copy": f.copy}
                          for f in self.facts],
                "info": self.info}

    def tensors(self) -> dict:
        return {"gate.keys": self.keys.detach().cpu().float().contiguous()}

    @classmethod
    def from_saved(cls, where: str, info, tensors: dict) -> "ContextEditor":
        if not isinstance(info, dict):
            raise TrusteditError(f"{where}: field 'gate' must be an object")
        with saved_fields(where):
            facts = []
            for j, f in enumerate(info["facts"]):
                if not isinstance(f, dict) or not isinstance(f.get("prompt"), str) or not isinstance(f.get("target"), str):
                    raise TrusteditError(f"{where}: gate.facts[{j}] needs string fields 'prompt' and 'target'")
                demos = f.get("demos", [])
                if not isinstance(demos, list) or not all(isinstance(d, str) for d in demos):
                    raise TrusteditError(f"{where}: gate.facts[{j}].demos must be a list of strings")
                facts.append(Fact(f["prompt"], f["target"], list(demos), bool(f.get("copy", False))))
            keys = tensors["gate.keys"]
            thr = info.get("threshold")
            if keys.dim() != 2 or keys.shape[0] != len(facts):
                raise TrusteditError(f"{where}: gate.keys has shape {tuple(keys.shape)}, expected one row per fact "
                                     f"({len(facts)})")
            return cls(info["kind"], facts, keys, None if thr is None else float(thr), info.get("encoder_fingerprint"),
                       dict(info.get("info") or {}))

    # ---- install / remove ----------------------------------------------------------------------

    def install(self, model) -> None:
        if self.installed:
            raise TrusteditError(f"the {self.kind} edit memory is already installed")
        tok = model.__dict__.get("_trustedit_tokenizer")
        if tok is None:
            raise TrusteditError(f"a {self.kind} patch needs the model's tokenizer: load the model with "
                                 "trustedit.models.load_model")
        enc = encoder()
        if self.encoder_fingerprint and enc.fingerprint != self.encoder_fingerprint:
            raise TrusteditError(f"the {self.kind} memory was built with sentence encoder {self.encoder_fingerprint}, "
                                 f"the installed one is {enc.fingerprint}")
        self._model, self._tok = model, tok
        self._register(lambda: model.register_forward_pre_hook(self._pre, with_kwargs=True),
                       lambda: model.register_forward_hook(self._post, with_kwargs=True))

    def _forget(self) -> None:
        self._now = {}
        self._model = None

    # ---- hooks ---------------------------------------------------------------------------------
    def _pre(self, module, args, kwargs):
        import torch

        if self._inner:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:  # embeddings only: nothing to read, the base model answers
            self._now = {}
            return None
        b, t = ids.shape
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        st = getattr(cache, STATE_ATTR, None) if cache is not None and past > 0 else None
        if st is not None and len(st.tokens) != b:
            st = None if len(st.tokens) != 1 or st.cf is not None else _Rows([list(st.tokens[0]) for _ in range(b)],
                                                                             [None] * b)
        if st is None:
            st = _Rows.fresh(b)
        mask = kwargs.get("attention_mask")
        cur = mask[:, -t:].to("cpu").bool() if mask is not None else torch.ones((b, t), dtype=torch.bool)
        answering = st.answering or (st.decided and t == 1)
        if not answering:
            rows = ids.to("cpu")
            for r in range(b):
                st.tokens[r].extend(rows[r][cur[r]].tolist())
        self._now = {"state": st, "answering": answering, "ids": ids, "cur": cur, "mask": mask, "cache": cache,
                     "past": past, "t": t}
        return None

    def _post(self, module, args, kwargs, output):
        if self._inner:
            return None
        now, self._now = self._now, {}
        if not now:
            return None
        st = now["state"]
        out_cache = keep_on_caches(output, now["cache"], STATE_ATTR, st)
        t0 = time.perf_counter()
        try:
            if now["answering"]:
                st.answering = True
                return self._continue(st, now, output, use_cache=out_cache is not None)
            return self._read_prompt(st, now, output, use_cache=out_cache is not None)
        finally:
            self.stats["seconds"] += time.perf_counter() - t0

    def _read_prompt(self, st: _Rows, now: dict, output, use_cache: bool):
        import torch

        tok = self._tok
        queries = [tok.decode(x, skip_special_tokens=True).strip() for x in st.tokens]
        picks = self.choose(queries)
        self.stats["decisions"] += len(picks)
        st.decided = True
        bos = [tok.bos_token_id] if getattr(tok, "add_bos_token", False) and tok.bos_token_id is not None else []
        st.ctx = [None] * len(picks)
        for r, (i, _) in enumerate(picks):
            if i is not None:
                st.ctx[r] = bos + list(tok(self.context_text(self.facts[i], queries[r]),
                                           add_special_tokens=False)["input_ids"])
        rows = [r for r, c in enumerate(st.ctx) if c is not None]
        self.stats["in_scope"] += len(rows)
        st.cf, st.cf_rows, st.cf_mask = None, rows, None
        mask = now["mask"]
        st.outer_width = int(mask.shape[1]) if mask is not None else now["past"] + now["t"]
        if not rows:
            return None
        device = output.logits.device
        seqs = []
        for r in rows:
            toks = st.tokens[r]
            if bos and toks[:1] == bos:
                toks = toks[1:]
            seqs.append(st.ctx[r] + toks)
        width = max(len(s) for s in seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        cmask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, width - len(s):] = torch.tensor(s)
            cmask[j, width - len(s):] = 1
        cur = now["cur"]
        logits = output.logits
        n_out, t = logits.shape[1], now["t"]
        # this call's real tokens of each row are the last ones of its counterfactual row
        keep = max(1, max(int(cur[r, t - n_out:].sum()) for r in rows))
        cf_logits, cf_cache = self._run(ids.to(device), cmask.to(device), keep, None, use_cache)
        st.cf, st.cf_mask = cf_cache, cmask
        new = logits.clone()
        for j, r in enumerate(rows):
            pos = torch.nonzero(cur[r]).flatten().tolist()
            pos = [p for p in pos if p >= t - n_out][-keep:]
            for k, p in enumerate(reversed(pos)):
                new[r, p - (t - n_out)] = cf_logits[j, keep - 1 - k].to(new.dtype)
        output.logits = new
        return output

    def _continue(self, st: _Rows, now: dict, output, use_cache: bool):
        import torch

        rows = st.cf_rows
        if not rows or st.cf is None:
            return None
        logits = output.logits
        device = logits.device
        ids = now["ids"][rows]
        t = ids.shape[1]
        mask = now["mask"]
        if mask is not None:
            tail = mask[rows, st.outer_width:].to("cpu").long()
        else:
            tail = torch.ones((len(rows), now["past"] + t - st.outer_width), dtype=torch.long)
        full = torch.cat([st.cf_mask, tail], 1)
        pos = (full.cumsum(-1) - 1).clamp_min(0)[:, -t:]
        n_out = logits.shape[1]
        cf_logits, cache = self._run(ids.to(device), full.to(device), n_out, pos.to(device), True, st.cf)
        st.cf = cache
        new = logits.clone()
        new[rows] = cf_logits.to(new.dtype)
        output.logits = new
        return output

    def _run(self, ids, mask, keep: int, pos, use_cache: bool, cache=None):
        """The counterfactual pass: the model itself, its hooks off for this call."""
        import torch

        from trustedit.prompts import cache_kwarg, output_cache

        if pos is None:
            pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        kw = {cache_kwarg(self._model): cache} if cache is not None else {}
        self._inner = True
        try:
            with torch.no_grad():
                out = self._model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=use_cache,
                                  logits_to_keep=keep, **kw)
        finally:
            self._inner = False
        return out.logits[:, -keep:], (output_cache(out) if use_cache else None)
