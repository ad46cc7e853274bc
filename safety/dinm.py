"""DINM: Detoxifying with Intraoperative Neural Monitoring (Wang et al. 2024, "Detoxifying Large
Language Models via Knowledge Editing", ACL 2024, arXiv:2403.14472), on the SafeEdit benchmark.

Per SafeEdit instance (adversarial prompt X, safe response Y_safe, unsafe response Y_unsafe,
general-knowledge pair (x_c, y_c)):

1. **Locate** the toxic layer: run (X + Y_safe) and (X + Y_unsafe); for every decoder layer take
   the mean of its output over the response tokens (padding masked out) and pick the layer where
   the two means are furthest apart (L2) -- :func:`locate_toxic_layer`.
2. **Tune** only that layer's FFN down-projection ("W_V of the toxic region", from
   :mod:`trustedit.arch`) with Adam for ``steps`` steps on
   ``NLL(Y_safe | X) + kl_weight * KL(P_edited || P_base)``, the KL taken over the next-token
   distributions at the answer positions of (x_c + y_c); P_base is computed once without grad,
   the edited side carries gradient -- :func:`dinm_loss`.
3. The result is a dense :class:`~trustedit.patch.Patch` on that one weight (reversible bit for
   bit). The evaluation is the ``safeedit`` suite (:mod:`trustedit.suites.safeedit`), run by the job
   skeleton's per-instance protocol (:mod:`trustedit.job`): edit, evaluate and revert each instance
   in turn (the paper's single-instance protocol), or keep the edits (``--sequential``).

Observed on SmolLM2-135M-Instruct: the L2 distance of step 1 grows monotonically with depth (7.6 at
layer 0 to 182 at layer 29 on SafeEdit id 0), so the located layer was the last one on every
instance measured; ``layer`` fixes another one.

Every prompt is the model's chat template around ``text + " " + system_suffix`` (EasyEdit's
``suffix_system_prompt``), the same before and after editing and for training, locating, the KL
constraint and evaluation.

Deviations from EasyEdit's implementation, documented:

* EasyEdit computes the edited model's KL side under ``torch.no_grad()``, so the constraint has
  no gradient and DINM reduces to plain fine-tuning; here it has gradient (tested).
* EasyEdit locates the layer on the two responses *alone* (no prompt), compares whole padded
  hidden-state sequences, and takes the last layer after the final norm; here the responses follow
  the edit prompt, only response tokens are averaged (padding masked), and every layer's own output
  is compared (forward hooks, no final norm).
* EasyEdit evaluates the unedited model on prompts without the suffix and the edited model with
  it; here both use the same prompt.
* EasyEdit writes the loss as ``0.1 * NLL + KL``; Adam is invariant to the scale of the loss, so
  that equals ``NLL + 10 * KL`` (``kl_weight=10``) up to Adam's epsilon.
* EasyEdit's KL is KL(base || edited) over the last ``len(tokenize(answer))`` positions (with the
  BOS token, so one position too many); here the direction is ``kl_direction`` (default
  KL(edited || base)) over exactly the positions that predict the answer tokens.
* Learning rate: ``lr`` is relative to the RMS of the tuned weight (step size ``lr * rms(W)``),
  so that the LLaMA-2-7B setting transfers across model sizes; see :class:`DINMConfig`.
* Prompts that do not fit ``max_length`` lose tokens from the left (EasyEdit truncates inputs
  from the left too); SafeEdit's test prompts fit 1000 tokens with SmolLM2's tokenizer.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, opt, set_seed, training_record

from trustedit.data.safeedit import EASYEDIT_SUFFIX, fit_length  # noqa: E402,F401  (shared with the safeedit suite)

KL_DIRECTIONS = ("edited||base", "base||edited")


@dataclass
class DINMConfig(MethodConfig):
    steps: int = opt(10, "Adam steps per instance (paper / EasyEdit LLaMA-2-7B: num_steps=10; 0: an identity edit).", ge=0)
    lr: float = opt(0.00625, "Adam learning rate relative to the RMS of the tuned weight (step size = lr * rms(W)). "
                    "EasyEdit's 5e-4 on LLaMA-2-7B down_proj weights (RMS ~0.02) is ~0.025; on SmolLM2-135M (RMS ~0.19) "
                    "a quarter of that (1.2e-3) was the best measured: SafeEdit first50 DS 92%, DG_avg +37 points, "
                    "locality 93.8% (0.0125: DS 90%, +34.5, 87.5%; 0.025: locality 77.5% on 5 instances).", gt=0)
    abs_lr: float = opt(0.0, "Absolute Adam learning rate; overrides lr when > 0 (EasyEdit LLaMA-2-7B: 5e-4).", ge=0)
    kl_weight: float = opt(10.0, "Weight of the general-knowledge KL term relative to the safe-response NLL. "
                           "EasyEdit's kl_factor=0.1 scales the NLL instead (0.1*NLL + KL), the same under Adam.", ge=0)
    kl_direction: str = opt("edited||base", "KL(edited || base) or 'base||edited' (EasyEdit's kl_loc_loss).",
                            choices=KL_DIRECTIONS)
    weight_decay: float = opt(0.0, "Adam weight decay (EasyEdit: 0).", ge=0)
    max_length: int = opt(1000, "Most tokens of prompt + response; longer prompts lose tokens from the left (EasyEdit: 1000).", ge=1)
    layer: object = opt(None, "Tune this layer for every instance (index or depth fraction); None: locate it per instance.",
                        layer=True)
    system_suffix: str = opt(EASYEDIT_SUFFIX, "Appended (after a space) to every user message, before and after editing "
                             "(EasyEdit's suffix_system_prompt); '' for none.")
    stop_loss: float = opt(1e-4, "Stop early once the loss falls below this (EasyEdit: 1e-4).", ge=0)
    shortcut: bool = opt(True, "Run only the layers from the tuned one up during tuning (their input is fixed); "
                         "checked against the full model on the first pass, which is used where they differ.")
    batch_size: int = opt(1, "Unused: DINM edits one instance at a time.", ge=1)


# ---- inputs ----------------------------------------------------------------------------------


def user_text(text: str, cfg: DINMConfig) -> str:
    """The user message: ``text`` plus the system suffix (identical before and after editing)."""
    from trustedit.data.safeedit import user_text as ut

    return ut(text, cfg.system_suffix)


@dataclass
class DINMInputs:
    """Token ids of one instance: ``edit`` (X -> Y_safe), ``unsafe`` (X -> Y_unsafe) and
    ``knowledge`` (x_c -> y_c)."""

    edit: object
    unsafe: object
    knowledge: object


def build_inputs(tokenizer, instance, cfg: DINMConfig, fmt=None) -> DINMInputs:
    """Pairs for an instance with ``adversarial_prompt``, ``safe``, ``unsafe``,
    ``knowledge_prompt`` and ``knowledge_answer`` (a :class:`~trustedit.data.safeedit.SafeEditInstance`)."""
    from trustedit.prompts import Pair, PromptFormat

    fmt = fmt or PromptFormat()
    x = fmt.prompt_ids(tokenizer, user_text(instance.adversarial_prompt, cfg))
    xc = fmt.prompt_ids(tokenizer, user_text(instance.knowledge_prompt, cfg))
    mk = lambda p, t: fit_length(Pair(p, fmt.target_ids(tokenizer, t)), cfg.max_length)  # noqa: E731
    return DINMInputs(mk(x, instance.safe), mk(x, instance.unsafe), mk(xc, instance.knowledge_answer))


# ---- step 1: locate the toxic layer ------------------------------------------------------------


def response_mean(states, response_mask):
    """Mean of ``states`` (B, T, H) over the positions where ``response_mask`` (B, T) is true -> (B, H)."""
    m = response_mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp_min(1)


def toxic_layer(safe_means, unsafe_means) -> tuple[int, list[float]]:
    """The layer whose response means differ most (L2), and every layer's distance.
    ``*_means``: (L, H), one row per layer."""
    d = (safe_means.float() - unsafe_means.float()).norm(dim=-1)
    return int(d.argmax()), [float(x) for x in d]


def layer_response_means(model, pairs, pad_id: int):
    """(L, len(pairs), H): each decoder layer's output averaged over each pair's response tokens.
    The pairs are right-padded into one batch; padding and prompt positions are masked out."""
    import torch

    from trustedit import arch
    from trustedit.hooks import capture
    from trustedit.prompts import IGNORE, collate

    batch = collate(pairs, pad_id)
    mask = (batch["labels"] != IGNORE) & batch["attention_mask"].bool()
    names = [f"{arch.arch_for(model).layers}.{i}" for i in range(arch.num_layers(model))]
    device = next(model.parameters()).device
    with torch.inference_mode(), capture(model, names) as store:
        model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    return torch.stack([response_mean(store[n][-1].float().cpu(), mask) for n in names])


def locate_toxic_layer(model, inputs: DINMInputs, pad_id: int) -> tuple[int, list[float]]:
    """Step 1: the layer where (X + Y_safe) and (X + Y_unsafe) differ most, and all distances."""
    means = layer_response_means(model, [inputs.edit, inputs.unsafe], pad_id)
    return toxic_layer(means[:, 0], means[:, 1])


# ---- step 2: the loss --------------------------------------------------------------------------


def _shifted(model, pair, start=None):
    """Logits at the positions that predict ``pair.target`` ((n_target, V), float32) and those
    targets. Only those positions go through the LM head (``logits_to_keep``). ``start``:
    ``(layer, hidden)`` runs only the decoder layers from ``layer`` on, fed ``hidden`` (the input
    of that layer, from :func:`layer_input`); see :func:`upper_layers`."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([pair.input_ids], device=device)
    n = len(pair.target)
    kw = {"attention_mask": torch.ones_like(ids), "use_cache": False, "logits_to_keep": n + 1}
    if start is None:
        logits = model(input_ids=ids, **kw).logits
    else:
        with upper_layers(model, start[0]):
            logits = model(inputs_embeds=start[1], **kw).logits
    return logits[0, -(n + 1) : -1].float(), ids[0, -n:]


def layer_input(model, pair, layer: int):
    """The hidden states entering decoder ``layer`` for ``pair`` ((1, T, H), no grad), i.e. the
    output of layer ``layer - 1``."""
    import torch

    from trustedit import arch
    from trustedit.hooks import capture

    name = f"{arch.arch_for(model).layers}.{layer - 1}"
    device = next(model.parameters()).device
    with torch.no_grad(), capture(model, [name]) as store:
        model(input_ids=torch.tensor([pair.input_ids], device=device), use_cache=False, logits_to_keep=1)
    return store[name][-1]


@contextmanager
def upper_layers(model, layer: int):
    """Within the block the model's decoder stack holds only layers ``layer..L-1``, so that a
    forward pass given ``inputs_embeds`` = the input of ``layer`` skips the frozen layers below
    the tuned one. Valid only where the model feeds ``inputs_embeds`` to the first layer
    unchanged (LLaMA-like models; not GPT-2, which adds position embeddings, nor Gemma, which
    scales them): :func:`fit` checks it on the first pass and otherwise runs the full model."""
    import torch

    from trustedit import arch

    path = arch.arch_for(model).layers
    parent_path, _, attr = path.rpartition(".")
    parent = arch.get_module(model, parent_path) if parent_path else model
    full = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList(list(full)[layer:]))
    try:
        yield
    finally:
        setattr(parent, attr, full)


def nll_term(logits, targets):
    """Mean NLL of ``targets`` (n,) under ``logits`` (n, V)."""
    import torch

    return torch.nn.functional.cross_entropy(logits.float(), targets)


def kl_term(logits, base_logp, direction: str = "edited||base"):
    """Mean over positions of KL between the edited next-token distributions (``logits``, (n, V),
    with gradient) and the base ones (``base_logp``, (n, V) log-probabilities, constant)."""
    import torch

    logp = torch.log_softmax(logits.float(), -1)
    if direction == "edited||base":
        kl = (logp.exp() * (logp - base_logp)).sum(-1)
    elif direction == "base||edited":
        kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
    else:
        raise ValueError(f"kl_direction must be one of {KL_DIRECTIONS}, got {direction!r}")
    return kl.mean()


def base_knowledge_logprobs(model, knowledge_pair):
    """P_base at the answer positions of (x_c + y_c), computed once, without grad."""
    import torch

    with torch.no_grad():
        logits, _ = _shifted(model, knowledge_pair)
        return torch.log_softmax(logits, -1)


def dinm_loss(model, inputs: DINMInputs, base_logp, kl_weight: float, direction: str = "edited||base",
              starts=(None, None)):
    """``(loss, nll, kl)`` with ``loss = NLL(Y_safe | X) + kl_weight * KL`` (both with gradient).
    ``starts``: the (layer, hidden) shortcuts of the edit and knowledge pairs, or None each."""
    logits, targets = _shifted(model, inputs.edit, starts[0])
    nll = nll_term(logits, targets)
    kl = kl_term(_shifted(model, inputs.knowledge, starts[1])[0], base_logp, direction)
    return nll + kl_weight * kl, nll, kl


def shortcuts(model, inputs: DINMInputs, layer: int, base_logp, tol: float = 1e-3):
    """``(layer, hidden)`` for the edit and knowledge pairs so that each step runs only the layers
    from the tuned one up (the layers below are frozen, their output fixed), or ``(None, None)``
    when ``layer`` is 0 or the shortcut does not reproduce the full model's log-probabilities
    (within ``tol``) on the knowledge pair."""
    import torch

    if layer == 0:
        return (None, None)
    start_k = (layer, layer_input(model, inputs.knowledge, layer))
    with torch.no_grad():
        fast = torch.log_softmax(_shifted(model, inputs.knowledge, start_k)[0], -1)
    if fast.shape != base_logp.shape or float((fast - base_logp).abs().max()) > tol:
        return (None, None)
    return ((layer, layer_input(model, inputs.edit, layer)), start_k)


def step_size(weight, cfg: DINMConfig) -> float:
    """Adam's learning rate for ``weight``: ``abs_lr``, else ``lr * rms(weight)``."""
    if cfg.abs_lr > 0:
        return cfg.abs_lr
    return cfg.lr * float(weight.detach().float().pow(2).mean().sqrt())


def tune(model, weight, inputs: DINMInputs, base_logp, cfg: DINMConfig, desc: str = "dinm",
         starts=(None, None)) -> list[dict]:
    """Step 2: Adam on ``weight`` alone (it must be the only parameter requiring grad); returns
    the loss history (one dict per step). ``starts``: see :func:`shortcuts`."""
    import torch
    from tqdm.auto import tqdm

    from trustedit.errors import NumericalError

    opt = torch.optim.Adam([weight], lr=step_size(weight, cfg), weight_decay=cfg.weight_decay)
    history = []
    for step in tqdm(range(cfg.steps), desc=desc, leave=False):
        loss, nll, kl = dinm_loss(model, inputs, base_logp, cfg.kl_weight, cfg.kl_direction, starts)
        if not torch.isfinite(loss):
            raise NumericalError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
        history.append({"loss": float(loss.detach()), "nll": float(nll.detach()), "kl": float(kl.detach())})
        if history[-1]["loss"] < cfg.stop_loss:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return history


def resolve_layer(model, instance_inputs: DINMInputs, cfg: DINMConfig, pad_id: int) -> tuple[int, list[float] | None]:
    from trustedit import arch
    from trustedit.methods.base import layer_index

    if cfg.layer is not None and cfg.layer != "":
        return layer_index(cfg.layer, arch.num_layers(model)), None
    return locate_toxic_layer(model, instance_inputs, pad_id)


def fit(lm, instance, cfg: DINMConfig, stages=None, fmt=None):
    """Edit one SafeEdit instance: locate, tune, return the Patch (the model is left unchanged).
    P_base of the KL term is the model as it stands when ``fit`` is called (in sequential editing:
    with the earlier edits applied). ``stages`` is accepted for the common signature (unused)."""
    import torch

    from trustedit import arch
    from trustedit.errors import UsageError
    from trustedit.hooks import only_trainable
    from trustedit.patch import dense_patch_from

    if cfg.kl_direction not in KL_DIRECTIONS:
        raise UsageError(f"kl_direction must be one of {', '.join(KL_DIRECTIONS)}, got {cfg.kl_direction!r}")
    set_seed(cfg.seed)
    model, tok = lm.model, lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    t0 = time.time()
    inputs = build_inputs(tok, instance, cfg, fmt)
    layer, distances = resolve_layer(model, inputs, cfg, pad)
    name = arch.layer_path(model, layer, arch.arch_for(model).down) + ".weight"
    before = {name: dict(model.named_parameters())[name].detach().clone()}
    was_training = model.training
    model.eval()  # as EasyEdit: no dropout while tuning
    try:
        with only_trainable(model, [name]) as (weight,), torch.enable_grad():
            base_logp = base_knowledge_logprobs(model, inputs.knowledge)
            starts = shortcuts(model, inputs, layer, base_logp) if cfg.shortcut else (None, None)
            lr = step_size(weight, cfg)
            history = tune(model, weight, inputs, base_logp, cfg, starts=starts)
            with torch.no_grad():  # the losses after the last step (history holds those before each step)
                final = [float(x) for x in dinm_loss(model, inputs, base_logp, cfg.kl_weight, cfg.kl_direction, starts)]
    except BaseException:
        with torch.no_grad():
            dict(model.named_parameters())[name].copy_(before[name])
        raise
    finally:
        model.train(was_training)
    patch = dense_patch_from(model, before, "dinm")
    patch.manifest["training"] = training_record(
        [h["loss"] for h in history], [inputs.edit], t0, layer=layer, parameters=[name], layer_distances=distances,
        lr=lr, shortcut=starts[0] is not None, nll_first=history[0]["nll"] if history else None,
        loss_final=final[0], nll_final=final[1], kl_final=final[2], instance=getattr(instance, "id", None))
    return patch


METHOD = Method(
    name="dinm",
    config=DINMConfig,
    fit=fit,  # fit(lm, instance: SafeEditInstance, cfg, stages=None) -> Patch (one instance per edit)
    citation="Wang et al. 2024, Detoxifying Large Language Models via Knowledge Editing (ACL 2024, arXiv:2403.14472)",
    summary="locate the toxic layer per instance, tune its FFN down-projection on the safe response with a KL "
            "constraint on general knowledge",
    protocol="per_instance",
)
