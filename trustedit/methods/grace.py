"""GRACE: a discrete key-value codebook at one module (Hartvigsen, Sankaranarayanan, Palangi, Kim &
Ghassemi, "Aging with GRACE: Lifelong Model Editing with Discrete Key-Value Adaptors", NeurIPS 2023).

Written from the paper (§3: the codebook, its deferral radii and the update rules of Alg. 1) in
pure steps. The model's weights are never written: the edit is a :class:`Codebook`, a runtime
component that a :class:`~trustedit.patch.Patch` carries in its ``gate`` field (installed on
``apply``, removed on ``revert``, so revert is bit-exact by construction).

* **The codebook** wraps one module (default: the MLP down-projection of one decoder layer). Entry
  ``i`` holds a key ``k_i`` (the module's *input* at the last prompt token of an edit), a value
  ``v_i`` (a replacement for the module's *output*), a deferral radius ``ε_i`` and a label ``y_i``
  (the edit's target text). At every position, with ``h`` the module's input there, the nearest key
  ``i* = argmin_i ‖h − k_i‖₂`` (Euclidean, as the paper) is looked up; when
  ``‖h − k_i*‖₂ ≤ ε_i*`` the module's output at that position is ``v_i*``, otherwise it is the
  module's own. When no position of a call is inside any radius the hook returns nothing: the
  model's outputs are the base model's, bit for bit.
* **Editing** (Alg. 1), one request at a time: ``h`` = the key at the last prompt token, ``d`` its
  distance to the nearest key. *Add* (empty codebook, or ``d > ε_init + ε_nearest``): a new entry
  ``(h, v, ε_init, y)``. *Expand* (``d ≤ ε_init + ε_nearest`` and the nearest entry has the same
  label): ``ε_nearest ← max(ε_nearest, d)`` (the paper's "coverage" rule), and the nearest entry's
  value is trained on the new input. *Split* (a different label): ``ε_nearest ← d/2`` (one float
  step below, so the midpoint belongs to the newer edit, as in the authors' code), the new entry is
  added with ``ε = d/2``.
* **Value training**: Adam (lr 1.0, as the authors' and EasyEdit's hyper-parameters) on the
  teacher-forced mean NLL of the target tokens given the prompt, with the codebook in place (the
  same per-position rule as at inference, the trained value a parameter), up to ``steps`` = 100
  iterations (the paper); it stops early once every target token is the argmax and the NLL is
  below ``nll_stop``. The decoder layers below the codebook's layer run once per edit
  (:func:`trustedit.methods.ft_edit.frozen_below`).

Deviations, documented:

* **Per-position lookup.** The authors' code queries one token per call (the last one, or a
  label-derived index during training) and replaces that token (or the whole prompt) when it
  matches. Here every position is looked up on its own, so one-pass teacher forcing, generation
  with a KV cache and left or right padding all get the same answer for the same prefix; a
  position far from every key is untouched.
* **Value initialisation.** ``value_init="output"`` (default): the module's own output at ``h``
  (the authors' "warm" start: the edit starts from the unedited model and moves only as far as
  the target needs); ``"random"``: uniform in [0, 1), the authors' "cold" default.
* **Identical keys.** A new edit whose key equals an existing key (``d = 0``) with another label
  takes over that entry (label and value); Alg. 1 would split both radii to 0 and keep the old
  value. Expand never shrinks a radius (the authors' code expands only when ``d > ε``).
* **Early stop.** The paper trains for a fixed 100 iterations (EasyEdit: "early_stop" on the
  loss); here training stops once every target token is the argmax and the NLL < ``nll_stop``.
* **Default layer and ε_init** come from a pilot on SmolLM2-135M-Instruct with ZsRE, not from
  the paper's settings (ε_init = 1.0 and late layers in the authors' and EasyEdit's
  hyper-parameters; a radius is in the units of one model's layer and does not transfer). At
  layer 15 of 30 (down-projection input, median key norm 9.0), over 100-200 ZsRE cases: distance
  between different edits' keys: 1 % quantile 3.75, median 6.46; edit to rephrase: median 4.73;
  every position of the locality prompts (prompt + answer) to every edit key: minimum 7.07.
  ``ε_init = 5`` keeps a 29 % margin below the locality minimum.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from trustedit.errors import TrusteditError, UsageError
from trustedit.methods.base import Method, MethodConfig, layer_index, opt, set_seed
from trustedit.runtime import RuntimeComponent

KIND = "grace"
# Two keys closer than SAME_KEY x (1 + |key|) are the same prompt read twice (the same question edited
# again, or float noise between passes): a split there would leave radii below that noise, so the
# newer edit takes the entry over instead.
SAME_KEY = 1e-5
DISTANCE = "euclidean"
VALUE_INITS = ("output", "random")
ACTIONS = ("add", "expand", "split")


@dataclass
class GRACEConfig(MethodConfig):
    layer: float = opt(0.5, "Codebook layer (its MLP down-projection): an int index or a fraction of depth in "
                       "[0,1). Default from a pilot on SmolLM2-135M/ZsRE: layer 15 of 30 trains every edit in "
                       "5-32 steps (layer 29 with lr 1.0 converged on 4 of 20).", layer=True)
    eps_init: float = opt(5.0, "Initial deferral radius ε_init of a new key (Euclidean, in the units of the "
                          "module's input; it depends on model and layer). Default from the same pilot at layer "
                          "15: no position of 400 ZsRE locality prompts lies within 7.07 of any of 200 edit keys; "
                          "59% of rephrases lie within 5 of their edit's key (median distance 4.7).", gt=0)
    value_init: str = opt("output", "Initial value of a new entry: 'output' (the module's own output at the key; "
                          "the authors' 'warm') or 'random' (uniform [0,1); the authors' 'cold').",
                          choices=VALUE_INITS)
    lr: float = opt(1.0, "Adam learning rate for a value (the authors' and EasyEdit's edit_lr).", gt=0)
    steps: int = opt(100, "Most Adam iterations per edit (the paper: 100).", ge=1)
    nll_stop: float = opt(0.1, "Stop early once every target token is the argmax and the target's mean NLL is "
                          "below this.", gt=0)


# ---- distances (one function for editing and inference) ---------------------------------------


def nearest(h, keys):
    """``(distance, index)`` of each row of ``h`` (``P x d``) to its nearest row of ``keys``
    (``n x d``, n ≥ 1): Euclidean, computed in float64 (the matrix-product form of the distance is
    exact enough there to decide a radius)."""
    import torch

    d = torch.cdist(h.double(), keys.to(h.device).double())
    return d.min(1)


# ---- the runtime component --------------------------------------------------------------------


@dataclass(eq=False)
class Codebook(RuntimeComponent):
    """GRACE's key-value codebook at module ``module`` (see the module docstring). ``keys``:
    ``n x d_in`` float32, ``values``: ``n x d_out`` float32, ``eps``: ``n`` float64."""

    module: str
    layer: int | None
    keys: object
    values: object
    eps: object
    labels: list
    eps_init: float
    ids: list = field(default_factory=list)  # the edit id that created each entry
    counts: dict = field(default_factory=lambda: {a: 0 for a in ACTIONS})
    _handles: list = field(default_factory=list, repr=False)
    _train: tuple | None = field(default=None, repr=False)  # (entry, value with grad) while a value trains
    _dev: dict = field(default_factory=dict, repr=False)  # device copies of keys/values/eps
    stats: dict = field(default_factory=lambda: {"calls": 0, "positions": 0, "deferred": 0}, repr=False)

    @classmethod
    def empty(cls, module: str, layer: int | None, d_in: int, d_out: int, eps_init: float) -> "Codebook":
        import torch

        return cls(module, layer, torch.zeros((0, d_in)), torch.zeros((0, d_out)),
                   torch.zeros(0, dtype=torch.float64), [], float(eps_init), [])

    def __len__(self) -> int:
        return len(self.labels)

    def __bool__(self) -> bool:  # a component, present even when empty (``len`` counts its entries)
        return True

    def copy(self) -> "Codebook":
        return Codebook(self.module, self.layer, self.keys.clone(), self.values.clone(), self.eps.clone(),
                        list(self.labels), self.eps_init, list(self.ids), dict(self.counts))

    # ---- the codebook rules (Alg. 1) ----------------------------------------------------------
    def update(self, key, label: str, value, edit_id: str = "") -> tuple[str, int, float | None]:
        """Apply GRACE's rule for a new edit with key ``key`` (``d_in``), label ``label`` and
        initial value ``value`` (``d_out``; used when an entry is added). Returns ``(action, entry
        to train, distance to the nearest key before the update or None)``."""
        import torch

        self._dev = {}
        key = key.detach().float().cpu().reshape(1, -1)
        value = value.detach().float().cpu().reshape(1, -1)
        if len(self) == 0:
            self._append(key, value, self.eps_init, label, edit_id)
            self.counts["add"] += 1
            return "add", 0, None
        dist, idx = nearest(key, self.keys)
        d, i = float(dist[0]), int(idx[0])
        if d > self.eps_init + float(self.eps[i]):
            self._append(key, value, self.eps_init, label, edit_id)
            self.counts["add"] += 1
            return "add", len(self) - 1, d
        if self.labels[i] == label:
            self.eps[i] = max(float(self.eps[i]), d)
            self.counts["expand"] += 1
            return "expand", i, d
        self.counts["split"] += 1
        tol = SAME_KEY * (1.0 + float(key.norm()))
        if d <= tol:  # the same key (up to float noise) with another label: the newer edit takes the entry over
            self.labels[i], self.ids[i] = label, edit_id
            self.values[i] = value[0]
            self.eps[i] = max(float(self.eps[i]), tol)
            return "split", i, d
        half = torch.tensor(d / 2, dtype=torch.float64)
        self.eps[i] = torch.nextafter(half, torch.tensor(0.0, dtype=torch.float64))
        self._append(key, value, float(half), label, edit_id)
        return "split", len(self) - 1, d

    def _append(self, key, value, eps: float, label: str, edit_id: str) -> None:
        import torch

        self.keys = torch.cat([self.keys, key])
        self.values = torch.cat([self.values, value])
        self.eps = torch.cat([self.eps, torch.tensor([eps], dtype=torch.float64)])
        self.labels.append(label)
        self.ids.append(edit_id)

    # ---- persistence ---------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"kind": KIND, "module": self.module, "layer": self.layer, "eps_init": self.eps_init,
                "distance": DISTANCE, "labels": list(self.labels), "ids": list(self.ids), "entries": len(self),
                "d_in": int(self.keys.shape[1]), "d_out": int(self.values.shape[1]), "counts": dict(self.counts)}

    def tensors(self) -> dict:
        return {"gate.keys": self.keys.detach().cpu().contiguous(), "gate.values": self.values.detach().cpu().contiguous(),
                "gate.eps": self.eps.detach().cpu().contiguous()}

    @classmethod
    def from_saved(cls, where: str, info, tensors: dict) -> "Codebook":
        import torch

        if not isinstance(info, dict):
            raise TrusteditError(f"{where}: field 'gate' must be an object")
        try:
            module, labels, eps_init = info["module"], info["labels"], info["eps_init"]
            keys, values, eps = tensors["gate.keys"], tensors["gate.values"], tensors["gate.eps"]
        except KeyError as e:
            raise TrusteditError(f"{where}: GRACE codebook field or tensor {e} missing") from None
        if not isinstance(module, str) or not module:
            raise TrusteditError(f"{where}: field 'gate.module' must be a module name")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise TrusteditError(f"{where}: field 'gate.labels' must be a list of strings")
        if isinstance(eps_init, bool) or not isinstance(eps_init, (int, float)) or not eps_init > 0:
            raise TrusteditError(f"{where}: field 'gate.eps_init' must be a positive number, got {eps_init!r}")
        layer = info.get("layer")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise TrusteditError(f"{where}: field 'gate.layer' must be an int or null, got {layer!r}")
        n = len(labels)
        if keys.dim() != 2 or values.dim() != 2 or eps.dim() != 1:
            raise TrusteditError(f"{where}: GRACE codebook tensors must be keys n x d_in, values n x d_out, eps n "
                                 f"(got {list(keys.shape)}, {list(values.shape)}, {list(eps.shape)})")
        if not keys.shape[0] == values.shape[0] == eps.shape[0] == n:
            raise TrusteditError(f"{where}: GRACE codebook has {n} labels but {keys.shape[0]} keys, "
                                 f"{values.shape[0]} values and {eps.shape[0]} radii")
        if not all(t.is_floating_point() and bool(torch.isfinite(t).all()) for t in (keys, values, eps)):
            raise TrusteditError(f"{where}: GRACE codebook tensors must be finite floating-point numbers")
        if n and float(eps.min()) < 0:
            raise TrusteditError(f"{where}: GRACE codebook has a negative deferral radius")
        ids = info.get("ids") or [""] * n
        if not isinstance(ids, list) or len(ids) != n:
            raise TrusteditError(f"{where}: field 'gate.ids' must list one edit id per entry")
        counts = info.get("counts") or {}
        if not isinstance(counts, dict):
            raise TrusteditError(f"{where}: field 'gate.counts' must be an object")
        return cls(module, layer, keys.float(), values.float(), eps.double(), list(labels), float(eps_init),
                   [str(x) for x in ids], {a: int(counts.get(a, 0)) for a in ACTIONS})

    # ---- install / remove ----------------------------------------------------------------------

    def install(self, model) -> None:
        """Register the forward hook on the codebook's module (all or nothing)."""
        if self.installed:
            raise TrusteditError("the GRACE codebook is already installed")
        mod = dict(model.named_modules()).get(self.module)
        if mod is None:
            raise TrusteditError(f"the GRACE codebook wraps module {self.module!r}, which the model lacks")
        d_in, d_out = _module_dims(mod)
        if (d_in, d_out) != (int(self.keys.shape[1]), int(self.values.shape[1])):
            raise TrusteditError(f"the GRACE codebook's keys/values are {self.keys.shape[1]}/{self.values.shape[1]}"
                                 f"-dimensional, module {self.module} maps {d_in} -> {d_out}")
        self._dev = {}
        self._register(lambda: mod.register_forward_hook(self._hook))

    def _forget(self) -> None:
        self._dev = {}

    @contextmanager
    def attached(self, model):
        """Installed within the block, always removed on exit."""
        self.install(model)
        try:
            yield self
        finally:
            self.remove()

    def _on(self, device):
        if self._dev.get("device") != device:
            self._dev = {"device": device, "keys": self.keys.to(device), "values": self.values.to(device),
                         "eps": self.eps.to(device)}
        return self._dev

    def _hook(self, module, args, output):
        import torch

        if not len(self) or not args or not torch.is_tensor(output):
            return None
        x = args[0]
        dev = self._on(x.device)
        flat = x.detach().reshape(-1, x.shape[-1])
        dist, idx = nearest(flat, dev["keys"])
        inside = dist <= dev["eps"][idx]
        self.stats["calls"] += 1
        self.stats["positions"] += int(flat.shape[0])
        if not bool(inside.any()):
            return None
        pos = inside.nonzero().flatten()
        self.stats["deferred"] += int(pos.numel())
        values = dev["values"]
        if self._train is not None:
            e, v = self._train
            values = torch.cat([values[:e], v.reshape(1, -1).to(values.dtype), values[e + 1:]])
        out = output.reshape(-1, output.shape[-1])
        out = out.index_put((pos,), values[idx[pos]].to(out.dtype))
        return out.view(output.shape)


def _module_dims(mod) -> tuple[int, int]:
    """``(d_in, d_out)`` of a Linear or a GPT-2 Conv1D (weight ``in x out``)."""
    if hasattr(mod, "in_features") and hasattr(mod, "out_features"):
        return int(mod.in_features), int(mod.out_features)
    if hasattr(mod, "nf") and hasattr(mod, "weight"):
        return int(mod.weight.shape[0]), int(mod.nf)
    raise TrusteditError(f"GRACE wraps a linear map; {type(mod).__name__} is not one")


# ---- the steps of an edit ---------------------------------------------------------------------


def key_and_output(model, module, prompt_ids: list[int]):
    """The module's input (the key) and its own output at the last prompt token (float32, CPU)."""
    import torch

    got = {}

    def hook(m, args, out):
        got["in"], got["out"] = args[0][0, -1].detach(), out[0, -1].detach()

    dev = next(model.parameters()).device
    h = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.base_model(input_ids=torch.tensor([prompt_ids], device=dev), use_cache=False)
    finally:
        h.remove()
    return got["in"].float().cpu(), got["out"].float().cpu()


def train_value(lm, book: Codebook, entry: int, prompt_ids: list[int], target_ids: list[int], layer: int,
                cfg: GRACEConfig) -> dict:
    """Train ``book.values[entry]`` so that the model, with the codebook installed, writes
    ``target_ids`` after ``prompt_ids`` (teacher forced); the record says how it went."""
    import torch

    from trustedit.errors import NumericalError
    from trustedit.hooks import only_trainable
    from trustedit.methods.ft_edit import frozen_below
    from trustedit.methods.rome import logits_at

    model = lm.model
    dev = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + target_ids[:-1]], device=dev)
    att = torch.ones_like(ids)
    pos_t = torch.arange(len(target_ids), device=dev) + len(prompt_ids) - 1
    pos_b = torch.zeros_like(pos_t)
    tgt = torch.tensor(target_ids, device=dev)
    v = book.values[entry].clone().to(dev).requires_grad_(True)
    optim = torch.optim.Adam([v], lr=cfg.lr)
    history, steps, ok, nll_v = [], 0, False, float("nan")
    was_training = model.training
    model.eval()
    book._train = (entry, v)
    try:
        with only_trainable(model, []), frozen_below(model, layer, ids, att), book.attached(model):
            for step in range(cfg.steps + 1):
                logits = logits_at(model, ids, att, pos_b, pos_t)
                nll = -torch.log_softmax(logits, -1)[torch.arange(len(tgt), device=dev), tgt].mean()
                nll_v = nll.item()
                if not torch.isfinite(nll):
                    raise NumericalError(f"grace: the value's loss became {nll_v} at step {step}; lower lr")
                ok = bool((logits.argmax(-1) == tgt).all()) and nll_v < cfg.nll_stop
                if step % 10 == 0 or ok or step == cfg.steps:
                    history.append({"step": step, "nll": round(nll_v, 4)})
                if ok or step == cfg.steps:
                    break
                if not nll.requires_grad:  # no position of the prompt falls within the entry's radius
                    history.append({"step": step, "nll": round(nll_v, 4), "note": "key outside its radius"})
                    break
                optim.zero_grad(set_to_none=True)
                nll.backward()
                optim.step()
                steps += 1
    finally:
        book._train = None
        model.train(was_training)
    book.values[entry] = v.detach().float().cpu()
    book._dev = {}
    return {"steps": steps, "final_nll": round(nll_v, 4), "converged": ok, "history": history}


def fit(lm, requests, cfg: GRACEConfig, stages=None):
    """Edit every request in turn into the codebook kept in ``requests.state["grace"]`` (a fresh
    state starts an empty one); a :class:`~trustedit.patch.Patch` with no weight delta whose
    ``gate`` is a copy of the whole codebook so far. The model is left as it was."""
    import torch
    from tqdm.auto import tqdm

    from trustedit import arch
    from trustedit.methods.requests import as_requests, encode_request, prompt_bos
    from trustedit.patch import Patch

    requests = as_requests(requests, "grace", subject=False)
    set_seed(cfg.seed)
    t0 = time.time()
    model, tok = lm.model, lm.tokenizer
    L = layer_index(cfg.layer, arch.num_layers(model))
    name = arch.layer_path(model, L, arch.arch_for(model).down)
    mod = dict(model.named_modules())[name]
    d_in, d_out = _module_dims(mod)
    held = requests.state.get(KIND)
    if held is None:
        book = Codebook.empty(name, L, d_in, d_out, cfg.eps_init)
    elif not isinstance(held, Codebook):
        raise UsageError(f"grace: the sequential state holds a {type(held).__name__} under 'grace', not a codebook")
    elif (held.module, held.eps_init) != (name, float(cfg.eps_init)):
        raise UsageError(f"grace: the run's codebook wraps {held.module} with eps_init {held.eps_init}; this fit asks "
                         f"for {name} with eps_init {cfg.eps_init} (keep layer and eps_init fixed within a run)")
    else:
        book = held.copy()  # the state changes only when the whole fit succeeded
    bos = prompt_bos(tok)
    g = torch.Generator().manual_seed(cfg.seed)
    records = []
    for i, req in enumerate(tqdm(requests, desc="grace", unit="edit")):
        t1 = time.time()
        p, t = encode_request(tok, req.prompt, req.target_new, bos)
        key, out = key_and_output(model, mod, p)
        value = out if cfg.value_init == "output" else torch.rand(d_out, generator=g)
        label = req.target_new.strip()
        action, entry, dist = book.update(key, label, value, req.id or str(i))
        rec = train_value(lm, book, entry, p, t, L, cfg)
        rec.update(id=req.id or str(i), action=action, entry=entry,
                   nearest_distance=None if dist is None else round(dist, 4), eps=round(float(book.eps[entry]), 4),
                   seconds=round(time.time() - t1, 3))
        records.append(rec)
    requests.state[KIND] = book
    gate = book.copy()
    actions = {a: sum(r["action"] == a for r in records) for a in ACTIONS}
    training = {"layer": L, "module": name, "eps_init": cfg.eps_init, "value_init": cfg.value_init, "lr": cfg.lr,
                "max_steps": cfg.steps, "nll_stop": cfg.nll_stop, "requests": len(requests), "entries": len(book),
                "actions": actions, "codebook_counts": dict(book.counts),
                "converged": sum(r["converged"] for r in records), "per_request": records,
                "seconds": round(time.time() - t0, 3)}
    return Patch(KIND, {}, {"training": training}, gate=gate)


METHOD = Method(
    name="grace", config=GRACEConfig, fit=fit, edits_requests=True, cumulative=True,
    train="trustedit.suites.sanitation:edit_requests",
    citation="Hartvigsen et al. 2023, Aging with GRACE: Lifelong Model Editing with Discrete Key-Value Adaptors "
             "(NeurIPS)",
    summary="a codebook of keys (a layer's inputs at edited prompts), deferral radii and trained replacement "
            "outputs, consulted at every position; weights untouched")
