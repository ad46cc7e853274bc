"""IKE: in-context knowledge editing (Zheng et al., EMNLP 2023, "Can We Edit Factual Knowledge by
In-Context Learning?").

No weight changes. The edit is stored as a new fact; every input the model reads is preceded by
``k`` demonstrations and the new fact (:mod:`trustedit.incontext` installs this as hooks). The
demonstrations are built from a training split's edits (CounterFact's train split by default,
``train_data``) in the paper's three kinds, with the paper's ratio copy : update : retain = 1 : 3 : 4:

* copy:   ``New Fact: <p> <t>`` then ``<p> <t>`` (the edit's own prompt answers the new target);
* update: ``New Fact: <p> <t>`` then ``<p'> <t>`` (a paraphrase answers the new target);
* retain: ``New Fact: <p> <t>`` then ``<q> <a>`` (an unrelated prompt keeps its answer).

They are the ``k`` training edits nearest to the new fact (cosine similarity of MiniLM embeddings, the
paper's retrieval), ordered so that the most similar one sits next to the input. No demonstration
ever contains the prompt being answered: candidates whose text contains the new fact's prompt are
skipped when they are retrieved, and a demonstration that contains the input is dropped when the
context is built.

With several edits in memory (sequential editing), the fact put before an input is the stored fact
whose prompt is nearest to it (one fact per input); with one edit (KnowEdit's single-edit protocol)
every input reads that fact, locality prompts included, as in the paper's evaluation.

Deviations, documented: ``k`` defaults to 8 (the paper's 32 demonstrations for GPT-J would multiply
the context length of every input on a CPU); one demonstration is one line pair, not the paper's
three-prompt blocks. The prompt format is the edit data's raw text (``New Fact:`` then the input on
its own line).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, opt

_POOLS: dict = {}  # (data fingerprint, pool size) -> (cases, unit-norm prompt embeddings): built once per process


@dataclass
class IKEConfig(MethodConfig):
    k: int = opt(8, "Demonstrations put before every input (the paper: 32 for GPT-J).", ge=0)
    train_data: str = opt("cf-train", "Training split the demonstrations come from (an editing dataset of "
                          "trustedit.data.knowedit, e.g. cf-train).")
    pool_size: int = opt(2000, "Training edits the demonstrations are retrieved from (the first N of train_data).",
                         ge=1)
    ratio: list = opt([1, 3, 4], "Copy : update : retain demonstrations (the paper: 1 : 3 : 4).", ge=0, min_items=3,
                      check=lambda v: None if len(v) == 3 and sum(v) > 0 else "three counts with a positive sum")


def demo_pool(name: str, size: int):
    """``(cases, embeddings of their prompts)`` of the first ``size`` edits of ``name``, once per process."""
    from trustedit.data.knowedit import load
    from trustedit.incontext import embed

    data = load(name, limit=size)
    key = (data.fingerprint, size)
    if key not in _POOLS:
        cases = [c for c in data.cases if c.rephrase and c.locality]
        _POOLS[key] = (cases, embed([c.prompt for c in cases]), data.describe())
    return _POOLS[key]


def demonstration(case, kind: str) -> str:
    fact = f"New Fact: {case.prompt} {case.target_new}\n"
    if kind == "copy":
        return fact + f"{case.prompt} {case.target_new}"
    if kind == "update":
        return fact + f"{case.rephrase[0]} {case.target_new}"
    prompt, answers = next(iter(case.locality.values()))[0]
    return fact + f"{prompt} {answers[0]}"


def kinds_for(k: int, ratio, rng) -> list[str]:
    """``k`` demonstration kinds in the proportions of ``ratio`` (largest remainders), in a seeded order."""
    total = sum(ratio)
    raw = [k * r / total for r in ratio]
    n = [int(x) for x in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - n[i], reverse=True)[:k - sum(n)]:
        n[i] += 1
    out = ["copy"] * n[0] + ["update"] * n[1] + ["retain"] * n[2]
    rng.shuffle(out)
    return out


def retrieve_demos(pool, pool_emb, prompt: str, k: int, ratio, seed: int, emb=None) -> list[str]:
    """The ``k`` demonstrations for the fact whose prompt is ``prompt`` (``emb``: its embedding, when
    the caller has it): the nearest training edits (most similar last), none of whose text contains
    ``prompt``."""
    from trustedit.incontext import embed, norm_text

    if k == 0 or not pool:
        return []
    q = norm_text(prompt)
    sims = (embed([prompt])[0] if emb is None else emb) @ pool_emb.T
    chosen = []
    for i in sims.argsort(descending=True).tolist():
        c = pool[i]
        texts = [c.prompt, *c.rephrase, *(p for rows in c.locality.values() for p, _ in rows)]
        if any(q in norm_text(x) or norm_text(x) == q for x in texts):
            continue
        chosen.append(c)
        if len(chosen) == k:
            break
    kinds = kinds_for(len(chosen), ratio, random.Random(seed))
    return [demonstration(c, kind) for c, kind in zip(reversed(chosen), kinds)]


def fit(lm, requests, cfg: IKEConfig, stages=None):
    """Add each request to the run's edit memory (``requests.state["ike"]``) with its demonstrations;
    the patch carries the whole memory (it replaces the previous fit's patch in a sequential run)."""
    from trustedit.incontext import ContextEditor, Fact, embed, encoder
    from trustedit.methods.requests import as_requests
    from trustedit.patch import Patch

    t0 = time.time()
    requests = as_requests(requests, "ike", subject=False)
    pool, pool_emb, pool_info = demo_pool(cfg.train_data, cfg.pool_size) if cfg.k else ([], None, {})
    mem = requests.state.setdefault("ike", {"facts": [], "keys": []})
    keys = embed([r.prompt for r in requests])  # the memory's retrieval keys, and each fact's demo query
    for r, key in zip(requests, keys):
        demos = retrieve_demos(pool, pool_emb, r.prompt, cfg.k, cfg.ratio, cfg.seed + len(mem["facts"]), key)
        mem["facts"].append(Fact(r.prompt, r.target_new, demos))
        mem["keys"].append(key)
    import torch

    editor = ContextEditor("ike", list(mem["facts"]), torch.stack(mem["keys"]),
                           encoder_fingerprint=encoder().fingerprint,
                           info={"demonstrations": cfg.k, "ratio": list(cfg.ratio), "pool": pool_info})
    patch = Patch("ike", {}, gate=editor)
    patch.manifest["training"] = {"requests": len(requests), "memory": len(mem["facts"]), "k": cfg.k,
                                  "pool": {**pool_info, "usable": len(pool)}, "seconds": round(time.time() - t0, 2)}
    return patch


METHOD = Method(
    name="ike", config=IKEConfig, fit=fit, edits_requests=True, cumulative=True,
    train="trustedit.suites.sanitation:edit_requests",
    citation="Zheng et al. 2023, Can We Edit Factual Knowledge by In-Context Learning? (EMNLP)",
    summary="no weight change: the new fact and k retrieved demonstrations (copy / update / retain) precede every input")
