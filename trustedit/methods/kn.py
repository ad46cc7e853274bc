"""KN: knowledge neurons (Dai, Dong, Hao, Chang, Sui & Wei, "Knowledge Neurons in Pretrained
Transformers", ACL 2022), for causal LMs.

Written from the paper (§3.2 knowledge attribution, §3.3 refining, §5.1 updating facts), in pure
steps:

1. **The old answer.** Requests carry no ground truth, so the fact to move is the model's own:
   the greedy first token after the bare prompt (with earlier edits of the same fit in place).
2. **Attribution** (:func:`attribute`): for each prompt of the fact, the integrated gradients
   (:func:`trustedit.methods.attribution.ig_attributions`, ``steps`` = m = 20 as in the paper) of
   every FFN intermediate neuron (one input unit of a layer's down-projection) of ``layers`` to the
   probability of the old answer's first token at the prompt's last position (the causal-LM
   counterpart of the paper's [MASK] position). The path is the paper's (``path="per_layer"``):
   one layer's activations at that position go 0 → observed while the other layers stay live;
   ``path="joint"`` (DEPN's single path through all layers) is m × layers times cheaper.
3. **Refining** (:func:`refine`): per prompt, the coarse neurons are those whose attribution is
   above ``threshold`` (0.2) × that prompt's largest; the knowledge neurons are the coarse neurons
   of more than ``share`` (0.5) of the prompts, ranked by their mean attribution over the prompts
   and capped at ``max_neurons``. The paper's prompts are paraphrases of the fact (PARAREL); an
   edit request has one prompt, so the prompt set is the bare prompt plus ROME's context
   templates (:func:`trustedit.methods.rome.context_templates`: short texts the model writes,
   ``"<text>. {prompt}"``), ``templates`` of them (3).
4. **Updating** (:func:`value_deltas`): for knowledge neuron i of layer l, the value slot
   ``v_i`` = column i of the down-projection (the vector the neuron writes into the residual
   stream; a *row* of GPT-2's Conv1D weight, which is stored in x out) becomes
   ``v_i − λ1·e(old) + λ2·e(new)``, with ``λ1 = λ2 = lam``.

Choices and deviations, documented:

* **e(x)** is the *output* embedding of the token, the row of ``lm_head.weight`` (the paper says
  "word embedding"; for tied models such as GPT-2 and SmolLM2 the input and output embeddings are
  the same matrix). For an untied model (Llama) the output row is used: the value slot writes into
  the residual stream, which the unembedding reads, so ``+e(new)`` raises the new token's logit
  directly (up to the final norm), while the input embedding of an untied model need not.
* **sign** (``signed=True``): the paper's BERT neurons are GELU outputs, positive when they fire;
  a SwiGLU neuron (``silu(gate)·up``) fires with either sign, and a neuron with a negative
  activation and a negative gradient has a positive attribution. Adding ``e(new)`` to its value
  slot would then push *away* from the new answer, so the update is multiplied by the sign of the
  neuron's activation at the bare prompt's last position (+1 for GELU neurons that fire, i.e. the
  paper's rule). ``signed=False`` is the literal rule.
* **λ**: ``lam`` = 2 for both terms, the value of the public implementation EasyEdit runs for KN
  (EleutherAI's ``knowledge-neurons``, ``edit_knowledge``: ``-= 2·e(old)``, ``+= 2·e(new)``).
  The paper's λ1, λ2 are hyper-parameters of its §5.1; raise ``lam`` for a stronger edit.
* **multi-token answers**: the paper's answers are single cloze tokens. Only the first token of the
  old and of the new answer is attributed and written; the rest of a multi-token ``target_new`` is
  left to the model (which, once it starts the new answer, often continues it).
* **success**: a request's edit ``converged`` when the new answer's first token is the model's
  greedy (rank-1) prediction after the bare prompt once the edit is in place (the paper's success
  rate counts facts whose prediction becomes the new answer); the first-token probabilities before
  and after are reported either way.
* Several requests in one fit are edited one after another, each located and written on the model
  with the earlier edits in place (as ROME here); the model is left as it was, bit for bit, and the
  edits come back as one :class:`~trustedit.patch.Patch` of dense deltas on the down-projections.

:func:`hit_at_k` says whether the edited neurons are the ones that carry the old answer before the
edit and the new answer after it (``trustedit locate``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.attribution import PATHS
from trustedit.methods.base import Method, MethodConfig, layer_index, opt, set_seed

_LAYERS_TEXT = "a list of layers (ints, negative from the top, or fractions of depth in [0, 1)); empty: all"


def _layer_spec(x):
    """One item of ``layers`` as :func:`layer_index` takes it (an int, or a fraction in [0, 1))."""
    if isinstance(x, bool):
        raise ValueError(x)
    if isinstance(x, str):
        x = float(x) if "." in x else int(x)
    if isinstance(x, float):
        if x.is_integer() and (x >= 1 or x < 0):
            return int(x)
        if not 0.0 <= x < 1.0:
            raise ValueError(x)
    elif not isinstance(x, int):
        raise ValueError(x)
    return x


def _layers_ok(v) -> str | None:
    try:
        for x in v:
            _layer_spec(x)
    except (TypeError, ValueError):
        return _LAYERS_TEXT
    return None


@dataclass
class KNConfig(MethodConfig):
    layers: list = opt([], "Layers whose FFN neurons are attributed and may be edited (ints, negative from the top, "
                       "or fractions of depth in [0,1)); empty: all layers, as in the paper.", check=_layers_ok)
    steps: int = opt(20, "Integrated-gradient steps m (the paper: 20).", ge=1)
    path: str = opt("per_layer", "IG path: per_layer (the paper: one layer scaled at a time, the others live) or "
                    "joint (all layers scaled together, as DEPN; m x layers times cheaper).", choices=PATHS)
    threshold: float = opt(0.2, "Per prompt, coarse neurons have attribution > this x the prompt's largest "
                           "(paper: 0.2).", gt=0, le=1)
    share: float = opt(0.5, "Knowledge neurons are coarse in more than this share of the prompts.", ge=0, lt=1)
    templates: int = opt(3, "Context prefixes the model writes (ROME's templates), besides the bare prompt: the "
                         "prompts the neurons are refined over; 0: the bare prompt only.", ge=0)
    max_neurons: int = opt(5, "At most this many knowledge neurons per request (the largest mean attribution).", ge=1)
    lam: float = opt(2.0, "λ1 = λ2: weight of -e(old) and +e(new) added to each value slot (EasyEdit/knowledge-neurons"
                     " use 2).", gt=0)
    signed: bool = opt(True, "Multiply each neuron's update by the sign of its activation at the prompt (SwiGLU "
                       "neurons fire with either sign; see the module docstring). False: the paper's literal rule.")


# ---- small pieces ----------------------------------------------------------------------------


def layer_list(lm, cfg: KNConfig) -> list[int]:
    """The attributed layers (sorted, distinct): ``cfg.layers`` or every layer."""
    from trustedit import arch

    n = arch.num_layers(lm.model)
    if not cfg.layers:
        return list(range(n))
    return sorted({layer_index(_layer_spec(x), n) for x in cfg.layers})


def _down_weight(lm, layer: int):
    """The down-projection's weight of ``layer`` as ``d_out x d_in`` (a view; transposed for Conv1D):
    column i is neuron i's value slot."""
    from trustedit import arch

    spec = arch.arch_for(lm.model)
    mod = arch.get_module(lm.model, arch.layer_path(lm.model, layer, spec.down))
    return mod.weight.T if spec.conv1d else mod.weight


def next_token_probs(lm, ids):
    """The next-token distribution (float32, CPU) after ``ids``."""
    import torch

    dev = next(lm.model.parameters()).device
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([list(ids)], device=dev)).logits[0, -1].float()
    return torch.softmax(logits, -1).cpu()


def answer_tokens(lm, request):
    """``(prompt_ids, old, new)``: the bare prompt's ids (BOS as the tokenizer adds it), the model's
    greedy next token (the old answer's first token) and the new answer's first token."""
    from trustedit.methods.requests import encode_request, prompt_bos

    p, tgt = encode_request(lm.tokenizer, request.prompt, request.target_new, prompt_bos(lm.tokenizer))
    return p, int(next_token_probs(lm, p).argmax()), int(tgt[0])


def prompt_set(lm, request, templates) -> list[list[int]]:
    """The ids of the prompt in each context template (``"{}"`` first: the bare prompt)."""
    from trustedit.methods.requests import encode_request, prompt_bos

    bos = prompt_bos(lm.tokenizer)
    return [encode_request(lm.tokenizer, t.format(request.prompt), request.target_new, bos)[0] for t in templates]


# ---- step 2: attribution -----------------------------------------------------------------------


def attribute(lm, prompts, token: int, layers, steps: int = 20, path: str = "per_layer"):
    """Per prompt (a list of ids), the IG attribution ``[len(layers), d_ff]`` of each neuron to the
    probability of ``token`` at the prompt's last position."""
    from trustedit.methods.attribution import ig_attributions

    return [ig_attributions(lm, ids, [token], layers, steps, [len(ids) - 1], path=path)[0] for ids in prompts]


# ---- step 3: refining --------------------------------------------------------------------------


def refine(attrs, threshold: float = 0.2, share: float = 0.5, max_neurons: int = 5):
    """Knowledge neurons from per-prompt attributions (each ``[layers, d_ff]``): a list of
    ``(layer position, unit, mean attribution)``, largest first. A neuron is coarse for a prompt when
    its attribution is positive and above ``threshold`` × the prompt's largest; it is kept when
    coarse for more than ``share`` of the prompts."""
    import torch

    A = torch.stack(list(attrs)).float()  # [prompts, layers, d_ff]
    n, d = A.shape[0], A.shape[2]
    peak = A.flatten(1).max(1).values.view(-1, 1, 1)
    coarse = (A > threshold * peak) & (A > 0)
    kept = coarse.sum(0).flatten() > share * n
    score = A.mean(0).flatten()
    idx = torch.nonzero(kept).flatten()
    idx = idx[torch.argsort(score[idx], descending=True)][:max_neurons]
    return [(int(i) // d, int(i) % d, float(score[i])) for i in idx]


# ---- step 4: the value-slot update -------------------------------------------------------------


def activation_signs(lm, ids, neurons):
    """``{(layer, unit): ±1}``: the sign of each neuron's activation at the last position of ``ids``
    (+1 for an exact zero). ``neurons``: ``(layer, unit)`` pairs with absolute layer indices."""
    import torch

    from trustedit import arch
    from trustedit.hooks import capture

    spec = arch.arch_for(lm.model)
    names = {L: arch.layer_path(lm.model, L, spec.down) for L in {L for L, _ in neurons}}
    dev = next(lm.model.parameters()).device
    with torch.no_grad(), capture(lm.model, list(names.values()), what="input") as st:
        lm.model(input_ids=torch.tensor([list(ids)], device=dev))
    return {(L, u): (-1.0 if float(st[names[L]][0][0, -1, u]) < 0 else 1.0) for L, u in neurons}


def value_deltas(lm, neurons, old: int, new: int, lam: float, signs=None) -> dict:
    """``{layer: ΔW}`` (``d_out x d_in``, float32): column ``unit`` of each neuron's down-projection
    gets ``lam · s · (e(new) − e(old))``, ``e`` the output-embedding row, ``s`` the neuron's sign from
    ``signs`` (default +1). ``neurons``: ``(layer, unit)`` pairs with absolute layer indices."""
    import torch

    E = lm.model.get_output_embeddings().weight
    step = (E[new].detach().float() - E[old].detach().float()).cpu()
    out: dict = {}
    for L, u in neurons:
        if L not in out:
            out[L] = torch.zeros(tuple(_down_weight(lm, L).shape), dtype=torch.float32)
        out[L][:, u] += lam * (signs or {}).get((L, u), 1.0) * step
    return out


# ---- the driver --------------------------------------------------------------------------------


def edit_one(lm, request, layers, templates, cfg: KNConfig):
    """Locate and edit one request on the model as it is, *in place*: ``(deltas, neurons, record)``
    with ``deltas = {layer: ΔW}`` (already added to the weights) and ``neurons`` a list of
    ``[layer, unit, score]``."""
    import torch

    t0 = time.time()
    p, old, new = answer_tokens(lm, request)
    before = next_token_probs(lm, p)
    attrs = attribute(lm, prompt_set(lm, request, templates), old, layers, cfg.steps, cfg.path)
    chosen = [(layers[li], u, s) for li, u, s in refine(attrs, cfg.threshold, cfg.share, cfg.max_neurons)]
    pairs = [(L, u) for L, u, _ in chosen]
    signs = activation_signs(lm, p, pairs) if cfg.signed and pairs else None
    deltas = value_deltas(lm, pairs, old, new, cfg.lam, signs)
    with torch.no_grad():
        for L, dW in deltas.items():
            W = _down_weight(lm, L)
            W.add_(dW.to(device=W.device, dtype=W.dtype))
    after = next_token_probs(lm, p)
    tok = lm.tokenizer
    def sig(x):  # 4 significant digits: small probabilities are the point
        return float(f"{float(x):.4g}")

    record = {"id": request.id, "converged": int(after.argmax()) == new,
              "target_prob_before": sig(before[new]), "target_prob_after": sig(after[new]),
              "old_token": tok.decode([old]), "new_token": tok.decode([new]),
              "old_prob_before": sig(before[old]), "old_prob_after": sig(after[old]),
              "neurons": len(chosen), "prompts": len(attrs), "seconds": round(time.time() - t0, 3)}
    return deltas, [[L, u, round(s, 8)] for L, u, s in chosen], record


def fit(lm, train, cfg: KNConfig, stages=None):
    """Edit every request in turn (each on the model with the earlier ones in place); a
    :class:`~trustedit.patch.Patch` of dense deltas on the edited down-projections (the model is
    left as it was, bit for bit)."""
    import torch
    from tqdm.auto import tqdm

    from trustedit.methods.requests import as_requests
    from trustedit.methods.rome import context_templates, dense_patch, restored

    set_seed(cfg.seed)
    requests = as_requests(train, "kn")
    t0 = time.time()
    layers = layer_list(lm, cfg)
    templates = context_templates(lm, cfg.templates, cfg.seed)
    total: dict = {}
    neurons, records = [], []
    with restored(lm, layers):
        for req in tqdm(requests, desc="kn", unit="edit"):
            deltas, found, rec = edit_one(lm, req, layers, templates, cfg)
            for L, dW in deltas.items():
                total[L] = total[L] + dW if L in total else dW
            neurons.append(found)
            records.append(rec)
    if not total:  # no knowledge neuron anywhere: a well-formed patch that changes nothing
        total = {layers[0]: torch.zeros(tuple(_down_weight(lm, layers[0]).shape), dtype=torch.float32)}
    patch = dense_patch(lm, total, "kn")
    patch.manifest["training"] = {"layers": layers, "neurons": neurons, "per_request": records,
                                  "converged": sum(r["converged"] for r in records), "requests": len(records),
                                  "templates": len(templates), "path": cfg.path, "steps": cfg.steps,
                                  "seconds": round(time.time() - t0, 2)}
    return patch


# ---- Hit@k -------------------------------------------------------------------------------------


def hit_at_k(lm, request, neurons, k: int = 10, *, patch=None, layers=None, steps: int = 20, path: str = "per_layer"):
    """Whether the located (edited) neurons are where the attribution puts the old and the new answer.

    ``neurons``: ``(layer, unit)`` or ``[layer, unit, score]`` items with absolute layer indices (the
    patch manifest's ``training.neurons[i]``). ``lm`` must be the *unedited* model; ``patch`` (the
    edit, or None) is applied for (b) and reverted before returning. ``layers``: the population of
    neurons ranked (default: every layer; pass the ``layers`` of the fit).

    Definition. Let ``P`` be the request's bare prompt (BOS as the tokenizer adds it), ``o`` the
    unedited model's greedy next token after ``P`` (the old answer's first token) and ``t`` the first
    token of ``" " + target_new``. For a model ``M`` and a token ``y``, ``A_M,y`` is the IG
    attribution (:func:`trustedit.methods.attribution.ig_attributions`, ``steps``, ``path``) of
    every neuron of ``layers`` (``len(layers) × d_ff`` of them) to ``p_M(y | P)`` at ``P``'s last
    position, and ``Top_k(A)`` the ``k`` neurons with the largest attribution (``torch.topk``; ties
    by its order). With ``N`` the set of given neurons (those outside ``layers`` count as misses):

    * (a) ``old = |N ∩ Top_k(A_unedited,o)| / |N|``: the share of the neurons that rank in the top
      k for the old answer before the edit;
    * (b) ``new = |N ∩ Top_k(A_edited,t)| / |N|``: the same for the new answer on the edited
      model (None without ``patch``).

    Returns ``{"k", "old", "new", "neurons": |N|, "old_token", "new_token"}`` (fractions None when
    ``N`` is empty)."""
    import torch

    from trustedit import arch

    all_layers = list(range(arch.num_layers(lm.model))) if layers is None else [int(L) for L in layers]
    pos = {L: i for i, L in enumerate(all_layers)}
    N = {(int(x[0]) % arch.num_layers(lm.model), int(x[1])) for x in neurons}
    p, old, new = answer_tokens(lm, request)
    tok = lm.tokenizer
    out = {"k": k, "old": None, "new": None, "neurons": len(N), "old_token": tok.decode([old]),
           "new_token": tok.decode([new])}
    if not N:
        return out

    def share(attr):
        d = attr.shape[1]
        top = torch.topk(attr.flatten(), min(k, attr.numel())).indices.tolist()
        top = {(all_layers[i // d], i % d) for i in top}
        return sum((L, u) in top for L, u in N if L in pos) / len(N)

    out["old"] = share(attribute(lm, [p], old, all_layers, steps, path)[0])
    if patch is not None:
        patch.apply(lm.model)
        try:
            out["new"] = share(attribute(lm, [p], new, all_layers, steps, path)[0])
        finally:
            patch.revert(lm.model)
    return out


CITATION = "Dai et al. 2022, Knowledge Neurons in Pretrained Transformers (ACL)"
METHOD = Method(name="kn", config=KNConfig, fit=fit, citation=CITATION,
                summary="locate the FFN neurons whose integrated gradients carry a fact and rewrite their value "
                        "slots: -e(old answer) + e(new answer) (knowledge neurons)",
                edits_requests=True, train="trustedit.suites.sanitation:edit_requests")
