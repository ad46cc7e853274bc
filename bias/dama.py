"""DAMA: Debiasing Algorithm through Model Adaptation (Limisiewicz, Mareček & Musil, ICLR 2024).

For a set of prompts such as "The nurse said that", DAMA

1. computes *value vectors* (ROME-style ``compute_v``): for every prompt and every target word
   (he / she / they) a vector ``delta_t`` which, added to the output of the **last decoder layer**
   at the prompt's last token, makes the model predict that word next (20 Adam steps, lr 0.5, a
   KL term on "{subject} is a" prompts weighted 0.0625, weight decay 0.5, norm kept within 4x the
   hidden state's norm). A delta shared by the targets absorbs what they have in common; the
   value vectors are the target-specific parts;
2. then, for each edited layer in ascending order and on the already edited model, collects the
   down-projection inputs ``U`` at the last token (averaged over context prefixes), computes the
   feed-forward outputs ``H = U W_downᵀ``, fits a PLS regression ``H -> V`` with ``d_c``
   components, orthonormalises its x-weights into ``Q`` and sets ``W_down <- (I - QQᵀ) W_down``.

The result is a :class:`~trustedit.patch.Patch` holding, per layer, the low-rank delta
``W' - W = -Q (Qᵀ W)`` as factors ``B = -Q`` (d_model x d_c) and ``A = Qᵀ W`` (GPT-2's Conv1D
stores ``Wᵀ``: ``B = -(Wᵀ Q)``, ``A = Qᵀ``). :func:`projection_basis` recovers ``Q``.

Usage::

    from trustedit.bias.dama import DAMAConfig, fit
    patch = fit(lm, prompts, DAMAConfig())        # prompts: None -> $TRUSTEDIT_DATA_DIR/dama/train_dama.json
    patch.apply(lm.model); ...; patch.revert(lm.model)

``fit(lm, prompts, cfg, stages=None)``: ``prompts`` are :class:`~trustedit.bias.prompts.BiasPrompt`
or train_dama.json records (``prompt`` and ``subject`` are used); ``stages`` is an optional
:class:`trustedit.profiling.Stages` (any ``stages(name)`` context manager factory) that times
each step; the seconds are also in ``patch.manifest["training"]["timings_s"]``. The model is left
exactly as it was (edits made during the fit are reverted bit for bit).

Which layer the value vectors live at: the reference's paper configuration (``adapt_model.py
--mixed_update --vs_at_last --no_colinear_vs --use_neutral --post_linear --no_whitening``,
scripts/run_adapt_model_7B.sh) computes them once, before any edit, at the output of decoder layer
``v_loss_layer`` = the last layer (``value_at_mlp=False``), and regresses the feed-forward outputs
of every edited layer onto the stacked he/she/they vectors (the features repeated once per
target). That is what is implemented (``values="stack"``; ``"contrast"`` regresses onto he - she).
Note that with the features repeated, the PLS x-weights depend on the data only through
``Hcᵀ Hc`` and ``Hcᵀ Σ_t V_t`` (Hc: centred H), i.e. stacking equals regressing onto the sum of
the targets' value vectors.

Deviations from the reference code (github.com/tomlimi/DAMA), and why:

* nothing is specific to LLaMA: module names come from :mod:`trustedit.arch`, layers and ``d_c``
  are fractions of depth / width (``first_layer=0.66``, ``last_layer=0.93`` give the paper's 21-29
  of 32; ``components=0.0625`` is 256 of 4096), pronoun ids come from the tokenizer in context;
* because the delta sits at the last layer's output, the forward pass up to it does not depend on
  the delta: hidden states are computed once and the 20 steps run only the final norm and the
  unembedding (exact, and ~100x cheaper than re-running the model each step);
* value vectors of many prompts are optimised together; each prompt keeps its own deltas, the
  loss is a sum, and Adam is element-wise, so this equals one optimisation per prompt;
* one joint Adam step per iteration (the reference steps once per target without zeroing the
  gradients in between, so earlier targets' gradients are applied again) and ``v_steps`` full
  updates (the reference stops one short); no early stop at loss < 0.05;
* the last token is found from the attention mask (the reference's index -1 points at padding
  for every right-padded prompt of a batch, where the delta then has no effect);
* the loss is the reference's (NLL + 0.0625 KL + 0.5 ``||delta_t + shared||^2 / ||h||``, lr 0.5
  in absolute units); each delta (target-specific and shared) is clamped to
  ``clamp_norm_factor * ||h||`` separately (the reference rescales both by the norm of their
  sum, once per target). A scale-free variant (lr in units of ``h``'s per-coordinate RMS, weight
  decay ``(||delta|| / ||h||)^2``) was tried and rejected: on SmolLM2-135M (``||h||`` ~ 820 at the
  last layer) lr 0.5 in those units overshoots (the total loss rises while the deltas reach
  ~2 ``||h||``), whereas the reference's form lowers it (2.87 -> 0.92 on 16 prompts, deltas ~3%
  of ``||h||``);
* PLS is a fast torch kernel NIPALS (PLS2, Dayal & MacGregor 1997) in fp32 on the model's
  device: the x-weights of ``PLSRegression(scale=False)``, validated against scikit-learn in
  the tests. ``XᵀX`` and ``XᵀY`` are formed once; each component then costs O(d^2) (power
  iteration, as scikit-learn) or, up to d = 1024, one exact eigendecomposition. The reference
  runs scikit-learn's NIPALS on 7k x 4096 numpy matrices per layer, with tol 1e-4;
* context prefixes are sampled from the model (top-k 5, as ROME/DAMA) and joined to the prompt
  as token ids (``prefix . EOS prompt``), not as text containing "</s><s>";
* no covariance whitening (the paper's run script passes ``--no_whitening``);
* by default a seeded sample of 256 prompts and 2 prefixes per length are used (paper: all
  2,409 prompts, 5 per length) so that the default job fits a CPU; ``max_prompts=0
  contexts_per_length=5`` gives the paper's sizes;
* the feed-forward bias (GPT-2) is not projected: it is the same for every input, so it carries
  no signal about the prompt.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, layer_index, opt, sample_items, set_seed


def _fraction_or_count(x) -> str | None:
    """DAMAConfig.components: a fraction of d_model below 1, or a whole count."""
    if x >= 1 and not float(x).is_integer():
        return "a fraction of d_model in (0, 1) or a whole count >= 1"
    return None


@dataclass
class DAMAConfig(MethodConfig):
    first_layer: float = opt(0.66, "First edited layer: an index, or a fraction of depth in [0,1) (0.66 of 32 layers -> 21, the paper's LLaMA-7B range).",
                              layer=True)
    last_layer: float = opt(0.93, "Last edited layer, inclusive: an index or a fraction of depth (0.93 of 32 -> 29).", layer=True)
    components: float = opt(0.0625, "Projection rank d_c per layer: a fraction of d_model (< 1) or a count (>= 1). The paper: 256 or 1024 of 4096.",
                             gt=0, check=_fraction_or_count)
    targets: list = opt(["he", "she", "they"], "Words whose value vectors are computed; the first two are the attribute pair.",
                        min_items=2)
    values: str = opt("stack", "PLS targets: 'stack' (every target's value vectors, features repeated per target; the paper) or 'contrast' (first minus second target).",
                      choices=("stack", "contrast"))
    v_steps: int = opt(20, "Adam steps of the value-vector optimisation.", ge=1)
    v_lr: float = opt(0.5, "Adam learning rate of the value-vector optimisation.", gt=0)
    kl_factor: float = opt(0.0625, "Weight of KL(edited || base) next-token distributions on the KL prompts.", ge=0)
    kl_template: str = opt("{} is a", "KL prompt; {} is the prompt's subject.")
    v_weight_decay: float = opt(0.5, "Weight of ||delta||^2 / ||h|| (the reference's), h the last layer's output at the bare prompt.", ge=0)
    clamp_norm_factor: float = opt(4.0, "Each delta's norm is kept within this multiple of ||h||.", gt=0)
    context_lengths: list = opt([5, 10], "Token lengths of the context prefixes sampled from the model (ROME/DAMA).", ge=1)
    contexts_per_length: int = opt(2, "Prefixes sampled per length (the paper: 5); the bare prompt is always used too.", ge=0)
    max_prompts: int = opt(256, "Use at most this many prompts (0: all; train_dama.json has 2,409), a seeded sample.", ge=0)
    pls_max_iter: int = opt(500, "Power-iteration steps per PLS component (as scikit-learn's NIPALS).", ge=1)
    pls_tol: float = opt(1e-10, "Power-iteration tolerance on the squared change of the unit x-weight vector (used when d_model > 1024; smaller models use an exact eigendecomposition per component).", gt=0)
    batch_size: int = opt(32, "Sequences per forward pass.", ge=1)
    v_batch_size: int = opt(32, "Prompts whose value vectors are optimised together (memory: prompts x contexts x targets x vocabulary).", ge=1)
    replay_lower_layers: bool = opt(True, "Record the hidden states entering the first edited layer once and skip the (never edited) layers below it on later statistics passes: exact, and several times faster.")


# ---- small pieces ------------------------------------------------------------------------------


def plain_format():
    """Plain continuation prompts (no chat template), BOS per the tokenizer's policy."""
    from trustedit.prompts import PromptFormat

    return PromptFormat(chat=False, plain_template="{question}")


def layer_of(spec, n_layers: int) -> int:
    """:func:`~trustedit.methods.base.layer_index`, except that a float with an integral value
    outside [0, 1) (``--set first_layer=21`` arrives as 21.0) counts as an index."""
    if isinstance(spec, float) and spec.is_integer() and (spec >= 1 or spec < 0):
        spec = int(spec)
    return layer_index(spec, n_layers)


def resolve_layers(first, last, n_layers: int) -> list[int]:
    """Edited layers ``first..last`` (inclusive); each an index or a fraction of depth."""
    from trustedit.errors import UsageError

    a, b = layer_of(first, n_layers), layer_of(last, n_layers)
    if a > b:
        raise UsageError(f"first_layer {first} (layer {a}) is above last_layer {last} (layer {b})")
    return list(range(a, b + 1))


def resolve_components(spec, d_model: int) -> int:
    """``d_c`` from a fraction of ``d_model`` (< 1) or a count (>= 1)."""
    from trustedit.errors import UsageError

    spec = float(spec)
    if spec <= 0:
        raise UsageError(f"components={spec}: must be > 0")
    k = int(spec) if spec >= 1 else max(1, round(spec * d_model))
    return min(k, d_model)


def target_token_ids(tokenizer, fmt, anchor: str, words) -> tuple[list[int], list[int]]:
    """First token id of each word as it continues ``anchor`` ("... said that" + " he"), and how
    many tokens each word has there. Raises if two words share their first token."""
    from trustedit.errors import UsageError

    base = fmt.prompt_ids(tokenizer, anchor)
    ids, lengths = [], []
    for w in words:
        full = fmt.prompt_ids(tokenizer, anchor + " " + w.strip())
        if full[: len(base)] != base or len(full) == len(base):
            raise UsageError(f"target {w!r}: the tokenizer does not continue {anchor!r} with it token by token")
        ids.append(full[len(base)])
        lengths.append(len(full) - len(base))
    if len(set(ids)) < len(ids):
        raise UsageError(f"targets {list(words)} do not have distinct first tokens ({ids})")
    return ids, lengths


def context_prefixes(lm, lengths, per_length: int, seed: int) -> list[str]:
    """Short texts sampled from the model (top-k 5, seeded): ``per_length`` of each length."""
    import torch

    tok, model = lm.tokenizer, lm.model
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if start is None or per_length <= 0:
        return []
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else start
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for n in lengths:
            ids = torch.full((per_length, 1), start, dtype=torch.long, device=device)
            with torch.no_grad():
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=5,
                                     top_p=1.0, temperature=1.0, max_new_tokens=int(n), min_new_tokens=int(n),
                                     pad_token_id=pad)
            for text in tok.batch_decode(gen[:, 1:], skip_special_tokens=True):
                text = " ".join(text.replace("{", " ").replace("}", " ").split())
                if text:
                    out.append(text)
    return out


def build_sequences(tokenizer, fmt, prompts, contexts, kl_template: str):
    """Token ids: ``rewrite[n * C + c]`` is prompt n after context c (``contexts[0]`` should be
    "", the bare prompt), ``kl[n]`` is the KL prompt of prompt n."""
    eos = tokenizer.eos_token_id
    ctx_ids = []
    for c in contexts:
        if not c:
            ctx_ids.append([])
        else:
            ids = fmt.prompt_ids(tokenizer, c.rstrip(".") + ".")
            ctx_ids.append(ids + ([eos] if eos is not None else []))
    rewrite, kl = [], []
    for p in prompts:
        pid = fmt.prompt_ids(tokenizer, p.prompt)
        rewrite += [c + pid for c in ctx_ids]
        kl.append(fmt.prompt_ids(tokenizer, kl_template.format(p.subject)))
    return rewrite, kl


class _Stop(Exception):
    pass


class ResidualReplay:
    """Skips the unedited lower layers on repeated passes over the same sequences.

    DAMA's statistics for layer ``l`` need a forward pass over every training sequence through
    the model already edited at layers ``< l``. Layers below the first edited one never change,
    so the hidden states entering it are the same on every pass: the first pass through a
    :class:`ResidualReplay` records them per batch (the batches of :func:`last_token_states` are
    deterministic: length-sorted, fixed size); on later passes the layers below ``layer`` are
    replaced by identity modules and ``layer`` receives the recorded states instead. Exact: the
    same tensors go through the same layers (tested against the full forward). For a LLaMA-7B
    editing 21-29 of 32 it saves ~80 % of the statistics compute; memory is one hidden state per
    token of every sequence, in the model's dtype, on its device.
    """

    def __init__(self, model, layer: int):
        from trustedit import arch

        self.model, self.layer = model, int(layer)
        self.layers = arch.get_module(model, arch.arch_for(model).layers)
        self.states: list | None = None  # per batch, (B, T, d), once recorded
        self.as_tuple: bool | None = None  # whether a decoder layer returns a tuple
        self.batch = 0
        self.key = None

    @contextmanager
    def session(self, n_seqs: int, batch_size: int):
        """One pass of :func:`last_token_states`: records on the first, replays afterwards."""
        key = (n_seqs, batch_size)
        if self.states is not None and key != self.key:
            raise ValueError(f"ResidualReplay recorded {self.key} (sequences, batch size), asked to replay {key}")
        handles, saved = [], []
        target = self.layers[self.layer]
        if self.states is None:
            self.states, self.key = [], key

            def record(mod, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                if len(self.states) != self.batch:
                    raise RuntimeError("ResidualReplay: batches recorded out of order")
                self.states.append(h.detach().clone())

            handles.append(target.register_forward_pre_hook(record, with_kwargs=True))
            if self.layer > 0:
                def kind(mod, args, out):
                    self.as_tuple = isinstance(out, tuple)

                handles.append(self.layers[0].register_forward_hook(kind))
        else:
            if self.layer > 0 and self.as_tuple is None:
                raise RuntimeError("ResidualReplay: the recording pass never ran the first decoder layer")

            def feed(mod, args, kwargs):
                h = self.states[self.batch]
                given = args[0] if args else kwargs["hidden_states"]
                if given.shape != h.shape:
                    raise RuntimeError(f"ResidualReplay: batch {self.batch} has shape {tuple(given.shape)}, recorded {tuple(h.shape)}")
                if args:
                    return (h,) + tuple(args[1:]), kwargs
                return args, {**kwargs, "hidden_states": h}

            handles.append(target.register_forward_pre_hook(feed, with_kwargs=True))
            skip = _identity_layer(self.as_tuple)
            for i in range(self.layer):
                saved.append(self.layers[i])
                self.layers[i] = skip
        try:
            yield self
        finally:
            for i, m in enumerate(saved):
                self.layers[i] = m
            for h in handles:
                h.remove()


def _identity_layer(as_tuple: bool):
    """A stand-in decoder layer that returns its input hidden states unchanged."""
    import torch

    class Identity(torch.nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return (hidden_states,) if as_tuple else hidden_states

    return Identity()


def last_token_states(model, module_name: str, seqs, *, what: str = "output", batch_size: int = 32, pad_id: int = 0,
                      stop: bool = True, desc: str | None = None, replay: "ResidualReplay | None" = None):
    """``(len(seqs), dim)`` float32: the input or output of ``module_name`` at each sequence's
    last token. Sequences are right-padded in length-sorted batches; with ``stop`` the forward
    pass ends at that module (later layers and the unembedding are never computed). With
    ``replay`` (a :class:`ResidualReplay` over the same ``seqs`` and ``batch_size``), the first
    pass records the hidden states entering the replay layer and later passes skip the layers
    below it."""
    import torch
    from tqdm.auto import tqdm

    from trustedit.prompts import pad_right

    mods = dict(model.named_modules())
    if module_name not in mods:
        raise KeyError(f"no such module: {module_name}")
    module = mods[module_name]
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [None] * len(seqs)
    grabbed = {}

    def take(x):
        x = x[0] if isinstance(x, tuple) else x
        grabbed["x"] = x[grabbed["rows"], grabbed["last"]].detach().float()
        if stop:
            raise _Stop

    if what == "output":
        handle = module.register_forward_hook(lambda m, i, o: take(o))
    elif what == "input":
        handle = module.register_forward_pre_hook(lambda m, i: take(i))
    else:
        raise ValueError(f"what must be 'input' or 'output', not {what!r}")
    try:
        with torch.no_grad(), (replay.session(len(seqs), batch_size) if replay is not None else nullcontext()):
            for b, s in enumerate(tqdm(range(0, len(order), batch_size), desc=desc or module_name, leave=False)):
                idx = order[s: s + batch_size]
                if replay is not None:
                    replay.batch = b
                ids, mask = pad_right([seqs[i] for i in idx], pad_id)
                grabbed.clear()
                grabbed["rows"] = torch.arange(len(idx), device=device)
                grabbed["last"] = (mask.sum(1) - 1).to(device)
                try:
                    model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                except _Stop:
                    pass
                if "x" not in grabbed:
                    raise RuntimeError(f"{module_name} was not called in the forward pass")
                for r, i in enumerate(idx):
                    out[i] = grabbed["x"][r]
    finally:
        handle.remove()
    return torch.stack(out)


def output_head(model):
    """``h -> logits``: the final norm and the unembedding applied to the last decoder layer's
    output (with the config's final logit soft-capping where the architecture has one)."""
    import torch

    from trustedit import arch

    spec = arch.arch_for(model)
    norm, head = arch.get_module(model, spec.final_norm), arch.get_module(model, spec.lm_head)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    cap = getattr(cfg, "final_logit_softcapping", None)

    def f(h):
        z = head(norm(h))
        return torch.tanh(z / cap) * cap if cap else z

    return f


def last_layer_name(model) -> str:
    from trustedit import arch

    return f"{arch.arch_for(model).layers}.{arch.num_layers(model) - 1}"


# ---- step 1: value vectors ---------------------------------------------------------------------


def optimise_values(head, h_rewrite, h_kl, target_ids, *, steps=20, lr=0.5, kl_factor=0.0625, weight_decay=0.5,
                    clamp_norm_factor=4.0):
    """Value vectors for one chunk of prompts, from hidden states at the last layer's output.

    ``h_rewrite``: (N, C, d) at the last token of each prompt under C contexts (context 0 is the
    bare prompt, whose state ``h`` sets the scale); ``h_kl``: (N, K, d) at the KL prompts;
    ``target_ids``: T token ids. Minimises, per prompt n and target t (the reference's loss),
    ``mean_c NLL_t(h + delta_t + shared) + kl_factor * KL(p || p_base on the KL prompts)
    + weight_decay * ||delta_t + shared||^2 / ||h||``, each delta kept within
    ``clamp_norm_factor * ||h||``. Returns ``(V, record)`` with V (T, N, d) the target-specific
    deltas and ``record["loss"]`` (also ``nll``, ``kl``, ``p_target``) the mean over prompts and
    targets before each step and after the last.
    """
    import torch

    T, (N, C, d) = len(target_ids), h_rewrite.shape
    h_rewrite, h_kl = h_rewrite.float(), h_kl.float()
    h0_norm = h_rewrite[:, 0].norm(dim=-1).clamp_min(1e-6)  # (N,)
    tids = torch.tensor(target_ids, device=h_rewrite.device)
    with torch.no_grad():
        base_kl = torch.log_softmax(head(h_kl).float(), dim=-1)  # (N, K, V)
    delta = torch.zeros(T, N, d, device=h_rewrite.device, requires_grad=True)
    shared = torch.zeros(N, d, device=h_rewrite.device, requires_grad=True)
    opt = torch.optim.Adam([delta, shared], lr=lr)
    max_norm = (clamp_norm_factor * h0_norm)[:, None]  # (N, 1)
    record = {"loss": [], "nll": [], "kl": [], "p_target": []}

    def losses():
        tot = delta + shared[None]  # (T, N, d)
        logp = torch.log_softmax(head(h_rewrite[None] + tot[:, :, None]).float(), dim=-1)  # (T, N, C, V)
        nll = -logp.gather(-1, tids.view(T, 1, 1, 1).expand(T, N, C, 1)).squeeze(-1)  # (T, N, C)
        logq = torch.log_softmax(head(h_kl[None] + tot[:, :, None]).float(), dim=-1)  # (T, N, K, V)
        kl = (logq.exp() * (logq - base_kl[None])).sum(-1).mean(-1)  # (T, N)
        wd = tot.pow(2).sum(-1) / h0_norm[None]
        return nll.mean(-1) + kl_factor * kl + weight_decay * wd, nll, kl

    for step in range(steps + 1):
        per, nll, kl = losses()
        with torch.no_grad():
            record["loss"].append(float(per.mean()))
            record["nll"].append(float(nll.mean()))
            record["kl"].append(float(kl.mean()))
            record["p_target"].append(float(torch.exp(-nll).mean()))
        if not torch.isfinite(per).all():
            from trustedit.errors import NumericalError

            raise NumericalError(f"DAMA value vectors: the loss became non-finite at step {step}; lower v_lr")
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        per.sum().backward()
        opt.step()
        with torch.no_grad():  # project each delta into its L2 ball
            for v, cap in ((delta, max_norm[None]), (shared, max_norm)):
                n = v.norm(dim=-1, keepdim=True)
                v.mul_(torch.where(n > cap, cap / n.clamp_min(1e-12), torch.ones_like(n)))
    return delta.detach(), record


def compute_value_vectors(lm, rewrite, kl, n_contexts: int, target_ids, cfg: DAMAConfig, stages=None):
    """Value vectors (T, N, d) for N prompts whose sequences come from :func:`build_sequences`."""
    import torch
    from tqdm.auto import tqdm

    from trustedit.hooks import only_trainable

    model = lm.model
    timer = stages or (lambda name: nullcontext())
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    name = last_layer_name(model)
    with timer("value_vectors/hidden"):
        h_all = last_token_states(model, name, list(rewrite) + list(kl), what="output", batch_size=cfg.batch_size,
                                  pad_id=pad, desc="dama: hidden states")
    N = len(kl)
    h_rw = h_all[: N * n_contexts].view(N, n_contexts, -1)
    h_kl = h_all[N * n_contexts:].view(N, 1, -1)
    head = output_head(model)
    chunks, records = [], []
    with timer("value_vectors/optimise"), only_trainable(model, []):
        for s in tqdm(range(0, N, cfg.v_batch_size), desc="dama: value vectors", leave=False):
            V, rec = optimise_values(head, h_rw[s: s + cfg.v_batch_size], h_kl[s: s + cfg.v_batch_size], target_ids,
                                     steps=cfg.v_steps, lr=cfg.v_lr, kl_factor=cfg.kl_factor,
                                     weight_decay=cfg.v_weight_decay, clamp_norm_factor=cfg.clamp_norm_factor)
            chunks.append(V)
            records.append((V.shape[1], rec))
    V = torch.cat(chunks, dim=1)
    summary = {k: [sum(n * r[k][i] for n, r in records) / N for i in range(len(records[0][1][k]))] for k in records[0][1]}
    return V, summary


# ---- step 2: statistics, PLS, projection --------------------------------------------------------


def layer_statistics(lm, layer: int, rewrite, n_contexts: int, batch_size: int = 32, replay=None):
    """``U`` (N, d_ff): the down-projection input of ``layer`` at the last token, averaged over
    the contexts of each prompt (``rewrite`` is request-major, see :func:`build_sequences`).
    ``replay``: an optional :class:`ResidualReplay` at a layer ``<= layer``."""
    from trustedit import arch

    model = lm.model
    name = arch.layer_path(model, layer, arch.arch_for(model).down)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    if replay is not None and replay.layer > layer:
        raise ValueError(f"replay at layer {replay.layer} cannot serve statistics of layer {layer}")
    u = last_token_states(model, name, rewrite, what="input", batch_size=batch_size, pad_id=pad,
                          desc=f"dama: statistics L{layer}", replay=replay)
    return u.view(len(rewrite) // n_contexts, n_contexts, -1).mean(1)


def down_weight(weight, conv1d: bool):
    """The down projection as (d_model, d_ff), whatever the storage orientation."""
    return weight.t() if conv1d else weight


def ffn_outputs(U, weight, conv1d: bool):
    """``H = U Wᵀ`` (N, d_model): the feed-forward outputs, without bias."""
    W = down_weight(weight, conv1d).to(device=U.device, dtype=U.dtype)
    return U @ W.t()


def regression_data(H, V, how: str):
    """(X, Y) for the PLS: ``stack`` -> X = H repeated per target, Y = all value vectors;
    ``contrast`` -> X = H, Y = V[0] - V[1]."""
    from trustedit.errors import UsageError

    if how == "stack":
        return H.repeat(V.shape[0], 1), V.reshape(-1, V.shape[-1])
    if how == "contrast":
        if V.shape[0] < 2:
            raise UsageError("values=contrast needs two targets")
        return H, V[0] - V[1]
    raise UsageError(f"values must be 'stack' or 'contrast', not {how!r}")


def _top_left_singular_vector(C, max_iter: int, tol: float, exact: bool):
    """Dominant left singular vector of C and the power iterations used (0: exact, from the
    eigendecomposition of the smaller Gram matrix; -1: power iteration did not converge).
    Power iteration on C Cᵀ stops when the squared change of the unit vector is below ``tol``
    (scikit-learn's criterion)."""
    import torch

    if exact:
        Cd = C.double() if C.device.type == "cpu" else C
        if Cd.shape[1] <= Cd.shape[0]:
            _, vecs = torch.linalg.eigh(Cd.t() @ Cd)
            w = Cd @ vecs[:, -1]
        else:
            _, vecs = torch.linalg.eigh(Cd @ Cd.t())
            w = vecs[:, -1]
        return (w / w.norm()).to(C.dtype), 0
    w = C[:, C.norm(dim=0).argmax()]
    w = w / w.norm()
    for it in range(1, max_iter + 1):
        nxt = C @ (C.t() @ w)
        n = nxt.norm()
        if n == 0:
            return w, it
        nxt = nxt / n
        if float(((nxt - w) ** 2).sum()) < tol:
            return nxt, it
        w = nxt
    return w, -1


EXACT_MAX_DIM = 1024  # up to this min(d, m) each PLS component uses an exact eigendecomposition


def pls_x_weights(X, Y, n_components: int, *, max_iter: int = 500, tol: float = 1e-10, center: bool = True,
                  exact: bool | None = None, info: dict | None = None):
    """x-weights (d, k) of a PLS2 regression X -> Y, as ``sklearn PLSRegression(scale=False)``.

    Kernel NIPALS (Dayal & MacGregor 1997): with ``S = XᵀX`` and ``C = XᵀY`` (centred), each
    component's weight ``w`` is the dominant left singular vector of the deflated ``C``;
    ``r = w - Σ r_j (p_jᵀ w)``, ``t t = rᵀ S r``, ``p = S r / tt``, ``q = Cᵀ r / tt`` and
    ``C <- C - tt p qᵀ``, which equals deflating X and Y. Work after forming S and C is
    independent of the number of rows. fp32 on X's device. Signs as scikit-learn (largest
    entry positive). Stops early (fewer columns) when no covariance is left.

    The dominant singular vector is exact (eigendecomposition of the smaller Gram matrix) when
    ``exact`` or, by default, when ``min(d, m) <= EXACT_MAX_DIM``; otherwise power iteration as
    scikit-learn's NIPALS (``max_iter``, ``tol`` on the squared change). ``info`` (a dict)
    receives the iterations per component (0: exact, -1: not converged).
    """
    import torch

    X = X.float()
    Y = Y.float().to(X.device)
    if Y.dim() == 1:
        Y = Y[:, None]
    if center:
        X = X - X.mean(0, keepdim=True)
        Y = Y - Y.mean(0, keepdim=True)
    S, C = X.t() @ X, X.t() @ Y
    d = X.shape[1]
    k = min(int(n_components), d)
    W, P, R = (X.new_zeros(d, k) for _ in range(3))
    c0 = C.norm()
    eps = torch.finfo(X.dtype).eps
    iters = []
    if exact is None:
        exact = min(d, C.shape[1]) <= EXACT_MAX_DIM
    a = 0
    while a < k:
        if c0 == 0 or C.norm() <= 1e-5 * c0:
            break
        w, it = _top_left_singular_vector(C, max_iter, tol, exact)
        iters.append(it)
        w = w * torch.sign(w[w.abs().argmax()])
        r = w - R[:, :a] @ (P[:, :a].t() @ w)
        Sr = S @ r
        tt = r @ Sr
        if tt <= eps * S.diagonal().sum():
            break
        p, q = Sr / tt, (C.t() @ r) / tt
        C = C - tt * torch.outer(p, q)
        W[:, a], P[:, a], R[:, a] = w, p, r
        a += 1
    if info is not None:
        info["iterations"] = iters
    return W[:, :a]


def orthonormal_basis(W, rtol: float | None = None):
    """Orthonormal basis (d, r) of the column space of W (SVD, rank-revealing)."""
    import torch

    if W.shape[1] == 0:
        return W
    U, s, _ = torch.linalg.svd(W.float(), full_matrices=False)
    tol = (rtol if rtol is not None else torch.finfo(torch.float32).eps * max(W.shape)) * s.max()
    return U[:, s > tol]


def projection_delta(weight, Q, conv1d: bool):
    """The Delta turning the down projection W (d_model, d_ff) into ``(I - QQᵀ) W``, low-rank:
    ``B = -Q``, ``A = Qᵀ W``. GPT-2's Conv1D stores ``Wᵀ``, whose delta is ``-(Wᵀ Q) Qᵀ``."""
    from trustedit.patch import Delta

    Wt = weight.detach().float()
    Q = Q.float().to(Wt.device)
    if conv1d:
        B, A = -(Wt @ Q), Q.t()
    else:
        B, A = -Q, Q.t() @ Wt
    return Delta("lowrank", {"B": B.cpu().contiguous(), "A": A.cpu().contiguous()})


def projection_basis(delta, conv1d: bool):
    """``Q`` (d_model, d_c) of a projection delta made by :func:`projection_delta`."""
    return delta.tensors["A"].t() if conv1d else -delta.tensors["B"]


def covariance_removed(X, Y, Q) -> float:
    """Share of the centred cross-covariance ``XᵀY`` (Frobenius norm) that lies in span(Q)."""
    X = X.float() - X.float().mean(0, keepdim=True)
    Y = Y.float().to(X.device)
    Y = Y - Y.mean(0, keepdim=True)
    C = X.t() @ Y
    Q = Q.to(C.device)
    rest = C - Q @ (Q.t() @ C)
    return float(1 - rest.norm() / C.norm().clamp_min(1e-30))


# ---- the method ----------------------------------------------------------------------------------


class _Timer:
    """Records seconds per stage and, if given, enters ``stages(name)`` too."""

    def __init__(self, stages=None, prefix: str = ""):
        self.stages, self.prefix, self.seconds = stages, prefix, {}

    @contextmanager
    def __call__(self, name: str):
        import sys

        name = self.prefix + name
        cm = self.stages(name) if self.stages is not None else nullcontext()
        t = time.perf_counter()
        with cm:
            yield
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                torch.cuda.synchronize()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 3)


@dataclass
class Prepared:
    """What every layer range and rank of one DAMA fit share: the prompts, their token
    sequences, and the value vectors (``V``: targets x prompts x d_model)."""

    prompts: list
    prompts_available: int
    contexts: list
    rewrite: list
    kl: list
    target_ids: list
    target_lens: list
    V: object
    value_record: dict


def prepare(lm, prompts, cfg: DAMAConfig, timer=None) -> Prepared:
    """Step 1: sample the prompts and contexts, build the sequences, compute the value vectors."""
    from trustedit.bias.prompts import as_prompts, load_train_prompts
    from trustedit.errors import UsageError

    timer = timer or _Timer()
    all_prompts = as_prompts(prompts) if prompts is not None else load_train_prompts()
    chosen = sample_items(all_prompts, cfg.max_prompts, cfg.seed)
    if not chosen:
        raise UsageError("DAMA needs at least one prompt")
    targets = [str(t) for t in cfg.targets]
    if len(targets) < 1 or (cfg.values == "contrast" and len(targets) < 2):
        raise UsageError(f"targets={targets}: values={cfg.values} needs {'two' if cfg.values == 'contrast' else 'one'} or more")
    fmt = plain_format()
    tids, tlens = target_token_ids(lm.tokenizer, fmt, chosen[0].prompt, targets)
    with timer("contexts"):
        contexts = [""] + context_prefixes(lm, [int(x) for x in cfg.context_lengths], cfg.contexts_per_length, cfg.seed)
    rewrite, kl = build_sequences(lm.tokenizer, fmt, chosen, contexts, cfg.kl_template)
    with timer("value_vectors"):
        V, vrec = compute_value_vectors(lm, rewrite, kl, len(contexts), tids, cfg, stages=timer)
    return Prepared(chosen, len(all_prompts), contexts, rewrite, kl, tids, tlens, V, vrec)


def project_layers(lm, prep: Prepared, layers, k: int, values: str, cfg: DAMAConfig, timer=None, replay=None):
    """Step 2, layer by layer in ascending order on the progressively edited model: statistics,
    PLS, projection. Returns ``(deltas, per_layer)``; the model is restored exactly on return.
    ``replay``: a :class:`ResidualReplay` at a layer ``<= min(layers)`` (None: full passes)."""
    from tqdm.auto import tqdm

    from trustedit import arch
    from trustedit.patch import Patch

    timer = timer or _Timer()
    model = lm.model
    spec = arch.arch_for(model)
    C = len(prep.contexts)
    applied, deltas, per_layer = [], {}, {}
    try:
        for L in tqdm(sorted(layers), desc="dama: layers", leave=False):
            name = arch.layer_path(model, L, spec.down) + ".weight"
            weight = dict(model.named_parameters())[name]
            with timer(f"statistics/L{L}"):
                U = layer_statistics(lm, L, prep.rewrite, C, cfg.batch_size, replay=replay)
            with timer(f"pls/L{L}"):
                H = ffn_outputs(U, weight.detach(), spec.conv1d)
                X, Y = regression_data(H, prep.V.to(H.device), values)
                info = {}
                Wx = pls_x_weights(X, Y, min(k, H.shape[0] - 1), max_iter=cfg.pls_max_iter, tol=cfg.pls_tol, info=info)
                iters = info["iterations"]
                Q = orthonormal_basis(Wx)
                delta = projection_delta(weight, Q, spec.conv1d)
            step = Patch("dama", {name: delta})
            step.apply(model)  # later layers' statistics come from the edited model
            applied.append(step)
            deltas[name] = delta
            per_layer[str(L)] = {"rank": int(Q.shape[1]), "pls_power_iterations": sum(i for i in iters if i > 0),
                                 "pls_not_converged": sum(1 for i in iters if i < 0),
                                 "covariance_removed": round(covariance_removed(X, Y, Q), 4)}
    finally:
        for step in reversed(applied):
            step.revert(model)
    return deltas, per_layer


def make_patch(lm, prep: Prepared, cfg: DAMAConfig, layers, k: int, deltas: dict, per_layer: dict, timings: dict,
               seconds: float):
    """The Patch with its training manifest."""
    from trustedit.bias.prompts import fingerprint
    from trustedit.patch import Patch

    V, vrec = prep.V, prep.value_record
    patch = Patch("dama", deltas)
    patch.manifest["training"] = {
        "layers": list(layers), "components": k, "values": cfg.values, "targets": [str(t) for t in cfg.targets],
        "target_token_ids": prep.target_ids, "target_token_counts": prep.target_lens, "prompts": len(prep.prompts),
        "prompts_available": prep.prompts_available, "prompts_fingerprint": fingerprint(prep.prompts),
        "contexts": prep.contexts,
        "value_loss_first": vrec["loss"][0], "value_loss_last": vrec["loss"][-1],
        "value_p_target_first": vrec["p_target"][0], "value_p_target_last": vrec["p_target"][-1],
        "value_vector_norm_mean": float(V.norm(dim=-1).mean()), "per_layer": per_layer,
        "lower_layers_replayed": bool(cfg.replay_lower_layers),
        "timings_s": timings, "seconds": round(seconds, 2),
    }
    return patch


def fit(lm, prompts=None, cfg: DAMAConfig | None = None, stages=None):
    """Fit DAMA on ``prompts`` (None: the DAMA training prompts) and return the Patch."""
    import torch

    from trustedit import arch

    cfg = cfg or DAMAConfig()
    set_seed(cfg.seed)
    t0 = time.time()
    timer = _Timer(stages, "dama/")
    model = lm.model
    layers = resolve_layers(cfg.first_layer, cfg.last_layer, arch.num_layers(model))
    was_training = model.training
    model.eval()
    try:
        prep = prepare(lm, prompts, cfg, timer)
        k = resolve_components(cfg.components, prep.V.shape[-1])
        replay = ResidualReplay(model, layers[0]) if cfg.replay_lower_layers and layers[0] > 0 else None
        deltas, per_layer = project_layers(lm, prep, layers, k, cfg.values, cfg, timer, replay)
    finally:
        model.train(was_training)
    del replay
    patch = make_patch(lm, prep, cfg, layers, k, deltas, per_layer, timer.seconds, time.time() - t0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return patch


SWEEPABLE = ("first_layer", "last_layer", "components")


def fit_sweep(lm, prompts, cfgs, stages=None):
    """One patch per config, in order. When the configs differ only in the edited layers and the
    rank (:data:`SWEEPABLE`), the prompts, contexts and value vectors are computed once and the
    layers below the lowest edited one are replayed (exact, as :func:`fit`); otherwise each
    config is fitted on its own. Each patch equals ``fit(lm, prompts, cfg)`` for its config."""
    from trustedit import arch
    from trustedit.methods.base import differ_beyond

    cfgs = list(cfgs)
    if differ_beyond(cfgs, SWEEPABLE):
        for c in cfgs:
            yield fit(lm, prompts, c, stages)
        return
    cfg = cfgs[0]
    set_seed(cfg.seed)
    model = lm.model
    n = arch.num_layers(model)
    grid = [resolve_layers(c.first_layer, c.last_layer, n) for c in cfgs]
    was_training = model.training
    model.eval()
    timer = _Timer(stages, "dama/")
    try:
        prep = prepare(lm, prompts, cfg, timer)
        low = min(g[0] for g in grid)
        replay = ResidualReplay(model, low) if cfg.replay_lower_layers and low > 0 else None
        for c, layers in zip(cfgs, grid):
            k = resolve_components(c.components, prep.V.shape[-1])
            t0 = time.time()
            step = _Timer(stages, "dama/")
            deltas, per_layer = project_layers(lm, prep, layers, k, c.values, c, step, replay)
            model.train(was_training)
            yield make_patch(lm, prep, c, layers, k, deltas, per_layer, {**timer.seconds, **step.seconds},
                             time.time() - t0)
            model.eval()
    finally:
        model.train(was_training)


METHOD = Method(
    name="dama",
    config=DAMAConfig,
    fit=fit,  # fit(lm, prompts, cfg, stages=None) -> Patch
    citation="Limisiewicz, Mareček & Musil 2024, Debiasing Algorithm through Model Adaptation (ICLR 2024)",
    summary="project the gender subspace (PLS on he/she/they value vectors) out of mid-upper MLP down-projections",
    fit_sweep=fit_sweep,
)
