"""Prompt/target machinery shared by every method and metric.

Rules this module enforces:

* prompt + target pairs are built from token ids (prompt ids ++ target ids), never by
  concatenating strings and re-tokenising;
* the chat template is used when the tokenizer has one (``chat=None`` means "if it has one");
* the BOS policy is explicit: without a chat template, BOS is prepended iff ``add_bos`` (default:
  the tokenizer's own ``add_bos_token``); a chat template decides BOS itself;
* training / teacher forcing pads on the right; generation pads on the left and uses the KV cache;
* :func:`shift_for_next_token` asserts that labels line up with the next-token logits.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from trustedit.distributed import merge, mine

IGNORE = -100


def cache_kwarg(model) -> str:
    """The keyword a model's forward (and ``generate``) takes its KV cache by: ``cache`` in
    transformers >= 5 (where ``past_key_values`` is deprecated, to be removed in 5.40),
    ``past_key_values`` before. Looked up once per model class (it is asked on every batch)."""
    return _cache_kwarg(type(model))


@functools.lru_cache(maxsize=None)
def _cache_kwarg(cls) -> str:
    import inspect

    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache a forward pass or ``generate`` returned (``cache`` or ``past_key_values``)."""
    c = getattr(out, "cache", None)
    return c if c is not None else getattr(out, "past_key_values", None)


class InputTooLong(ValueError):
    """A text that cannot fit the model's context whatever its tokenisation (see :func:`guard_length`)."""


def max_token_chars(tokenizer) -> int:
    """The longest vocabulary entry in characters (computed once per tokenizer)."""
    n = getattr(tokenizer, "_trustedit_max_token_chars", None)
    if n is None:
        try:
            n = max((len(t) for t in tokenizer.get_vocab()), default=64)
        except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary listing: a generous bound
            n = 64
        try:
            tokenizer._trustedit_max_token_chars = n
        except AttributeError:  # pragma: no cover
            pass
    return n


def guard_length(tokenizer, text: str) -> None:
    """Refuse, before tokenising it, a text too long for the model's context in *any* tokenisation:
    every token covers at most :func:`max_token_chars` characters, so a text longer than that times
    the context cannot fit. (A 50 MB question would otherwise be tokenised and sent to the model.)"""
    limit = getattr(tokenizer, "model_max_length", None)
    if not limit or limit > 10_000_000 or len(text) <= limit:
        return
    if len(text) > limit * max_token_chars(tokenizer):
        raise InputTooLong(f"an input of {len(text):,} characters ({text[:40]!r}...) cannot fit the model's context "
                           f"of {limit:,} tokens")


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes prompt token ids and an answer becomes target token ids."""

    chat: bool | None = None  # None: use the chat template iff the tokenizer has one
    system: str | None = None  # system message for chat templates (None: template default)
    plain_template: str = "Question: {question}\nAnswer:"  # used without a chat template
    add_bos: bool | None = None  # plain prompts only; None: follow the tokenizer
    end_target_with_eos: bool = True  # target ids end with EOS (end-of-turn for chat models)

    def uses_chat(self, tokenizer) -> bool:
        has = bool(getattr(tokenizer, "chat_template", None))
        if self.chat is None:
            return has
        if self.chat and not has:
            raise ValueError("chat=True but the tokenizer has no chat template")
        return self.chat

    def describe(self, tokenizer) -> dict:
        return {
            "chat_template": self.uses_chat(tokenizer),
            "system": self.system,
            "plain_template": None if self.uses_chat(tokenizer) else self.plain_template,
            "bos": "chat template decides" if self.uses_chat(tokenizer) else bool(self._bos(tokenizer)),
            "target_ends_with_eos": self.end_target_with_eos,
        }

    def _bos(self, tokenizer) -> bool:
        if self.add_bos is not None:
            return self.add_bos and tokenizer.bos_token_id is not None
        return bool(getattr(tokenizer, "add_bos_token", False)) and tokenizer.bos_token_id is not None

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        guard_length(tokenizer, question)
        if self.uses_chat(tokenizer):
            messages = ([{"role": "system", "content": self.system}] if self.system is not None else []) + [
                {"role": "user", "content": question}
            ]
            out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if hasattr(out, "keys") else out
            return list(ids)
        ids = tokenizer(self.plain_template.format(question=question), add_special_tokens=False)["input_ids"]
        return ([tokenizer.bos_token_id] if self._bos(tokenizer) else []) + list(ids)

    def target_ids(self, tokenizer, answer: str) -> list[int]:
        # After "Answer:" a plain prompt expects a space-led word; a chat turn starts fresh.
        guard_length(tokenizer, answer)
        text = answer.strip() if self.uses_chat(tokenizer) else " " + answer.strip()
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.end_target_with_eos and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return ids


@dataclass
class Pair:
    """A prompt and its target, as token ids. ``input_ids = prompt + target``."""

    prompt: list[int]
    target: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt + self.target

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * len(self.prompt) + self.target


def make_pairs(tokenizer, fmt: PromptFormat, questions, answers) -> list[Pair]:
    return [Pair(fmt.prompt_ids(tokenizer, q), fmt.target_ids(tokenizer, a)) for q, a in zip(questions, answers)]


def pad_right(seqs, pad_id: int):
    """``(ids, attention_mask)`` long tensors for token-id lists, right-padded with ``pad_id``
    to the longest."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def collate(pairs: list[Pair], pad_id: int, max_length: int | None = None):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors.

    Sequences longer than ``max_length`` lose prompt tokens from the left (never target tokens).
    """
    rows = []
    for p in pairs:
        ids, lab = p.input_ids, p.labels
        if max_length is not None and len(ids) > max_length:
            if len(p.target) >= max_length:
                raise ValueError(f"target of {len(p.target)} tokens does not fit max_length={max_length}")
            ids, lab = ids[-max_length:], lab[-max_length:]
        rows.append((ids, lab))
    input_ids, mask = pad_right([ids for ids, _ in rows], pad_id)
    labels, _ = pad_right([lab for _, lab in rows], IGNORE)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def shift_for_next_token(logits, labels, input_ids=None):
    """``(logits[:, :-1], labels[:, 1:])``: position t-1 predicts token t.

    Asserts the shapes agree and, when ``input_ids`` is given, that every label is the input
    token at its own position (so after the shift each label is the *next* token of the
    position whose logits are read).
    """
    assert logits.shape[:2] == labels.shape, f"logits {tuple(logits.shape)} vs labels {tuple(labels.shape)}"
    if input_ids is not None:
        keep = labels != IGNORE
        assert bool((input_ids[keep] == labels[keep]).all()), "labels do not match the input tokens"
        assert not bool(keep[:, 0].any()), "the first position has a label but nothing predicts it"
    return logits[:, :-1], labels[:, 1:]


def common_prefix_len(seqs) -> int:
    """Length of the longest token prefix shared by every sequence."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(x) for x in seqs)
    i = 0
    while i < n and all(x[i] == first[i] for x in seqs):
        i += 1
    return i


class PrefixCache:
    """The KV cache of a prompt prefix shared by many sequences (e.g. a chat template's system
    message), computed once and copied per batch. Used only at inference: the prefix must be
    computed by the same weights, so a cache is valid for one model state only."""

    MIN_LEN = 8

    def __init__(self, model, prefix: list[int]):
        import torch

        self.prefix = list(prefix)
        device = next(model.parameters()).device
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([self.prefix], device=device), use_cache=True)
        self.cache = output_cache(out)

    @classmethod
    def for_sequences(cls, model, seqs, keep_last: int = 1):
        """A cache for the common prefix of ``seqs`` (leaving at least ``keep_last`` tokens of
        each sequence outside it), or None when sharing is not worthwhile or not supported."""
        from transformers import DynamicCache

        n = min(common_prefix_len(seqs), min(len(x) for x in seqs) - keep_last) if seqs else 0
        if n < cls.MIN_LEN:
            return None
        pc = cls(model, seqs[0][:n])
        return pc if isinstance(pc.cache, DynamicCache) else None

    def __len__(self):
        return len(self.prefix)

    def expand(self, batch_size: int):
        import copy

        c = copy.deepcopy(self.cache)
        c.batch_repeat_interleave(batch_size)
        return c


def _forward(model, input_ids, attention_mask, prefix: PrefixCache | None = None):
    """Logits for ``input_ids``; with ``prefix`` the rows are continuations of the cached prefix
    (``input_ids`` then excludes it)."""
    import torch

    if prefix is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    b = input_ids.shape[0]
    mask = torch.cat([torch.ones((b, len(prefix)), dtype=attention_mask.dtype, device=attention_mask.device), attention_mask], 1)
    return model(input_ids=input_ids, attention_mask=mask, use_cache=True, **{cache_kwarg(model): prefix.expand(b)}).logits


def token_nll(model, batch, prefix: PrefixCache | None = None):
    """Per-row summed NLL and number of target tokens, plus the next-token argmax per position.

    With ``prefix``, ``batch`` holds the sequences with the prefix's tokens removed."""
    import torch

    device = next(model.parameters()).device
    b = {k: v.to(device) for k, v in batch.items()}
    logits = _forward(model, b["input_ids"], b["attention_mask"], prefix)
    logits, labels = shift_for_next_token(logits, b["labels"], b["input_ids"])
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE
    safe = labels.clamp_min(0)
    nll = -(logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * mask)
    return nll.sum(1), mask.sum(1), logits.argmax(-1), labels


def lm_loss(model, batch):
    """Mean cross-entropy over target tokens (prompt masked), the training objective."""
    nll, n, _, _ = token_nll(model, batch)
    return nll.sum() / n.sum().clamp_min(1)


def batches(items, batch_size: int, key=None):
    """Yield (indices, items) batches; with ``key`` the items are sorted by it (descending) to cut
    padding, and the caller restores order through the indices."""
    order = list(range(len(items)))
    if key is not None:
        order.sort(key=lambda i: -key(items[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        yield idx, [items[i] for i in idx]


def predicted_target_tokens(model, pairs: list[Pair], pad_id: int, batch_size: int = 16, desc="teacher-forced",
                            share_prefix: bool = True):
    """Teacher forcing: for each pair, the model's argmax at each target position (one list of
    ids per pair, aligned with ``pair.target``). Used by Edit Succ. and Locality alike.

    ``share_prefix`` computes the prompts' common prefix (a chat template's system turn) once."""
    import torch
    from tqdm.auto import tqdm

    out: list[list[int] | None] = [None] * len(pairs)
    prefix = PrefixCache.for_sequences(model, [p.prompt for p in pairs]) if share_prefix else None
    cut = len(prefix) if prefix else 0
    with torch.inference_mode():
        for idx, chunk in tqdm(mine(list(batches(pairs, batch_size, key=lambda p: len(p.input_ids)))), desc=desc,
                               leave=False):
            batch = collate([Pair(p.prompt[cut:], p.target) for p in chunk], pad_id)
            _, _, pred, labels = token_nll(model, batch, prefix)
            for j, i in enumerate(idx):
                keep = labels[j] != IGNORE
                out[i] = pred[j][keep.to(pred.device)].tolist()
    return merge(out)


SENTENCE_END = "<sentence-end>"  # a stop "string" that means: the end of the first sentence
# Words after which a full stop does not end a sentence ("St. Ives", "Mr. Smith"); initials ("J. R. R.
# Tolkien") and initialisms ("U.S.") are recognised by their shape.
ABBREVIATIONS = frozenset("""St Mt Mr Mrs Ms Dr Jr Sr Snr Jnr vs etc No Nos Co Corp Inc Ltd Bros Ft Gen Col Capt Cmdr Lt Sgt
Maj Adm Rev Prof Hon Gov Sen Rep Pres Ave Blvd Rd approx ca Vol Fig Op Mme Mlle Messrs""".split())
_END = re.compile(r"[.!?]")


def sentence_end(text: str, final: bool = True) -> int | None:
    """Index just past the first sentence end in ``text``: ``.``, ``!`` or ``?`` followed by
    whitespace (or by the end of the text when ``final``), where a ``.`` after an initial, an
    initialism or a common abbreviation (:data:`ABBREVIATIONS`) does not count, nor one inside a
    number ("3.5"). ``final=False`` is for text still being generated: a stop at its very end is
    undecided until the next character arrives."""
    for m in _END.finditer(text):
        i = m.end()
        after = text[i:i + 1]
        if (after and not after.isspace()) or (not after and not final):
            continue
        if m.group() == ".":
            w = re.search(r"(\S*)$", text[:m.start()]).group(1).lstrip("(\"'")
            if (len(w) == 1 and w.isalpha()) or "." in w or w in ABBREVIATIONS:
                continue
        return i
    return None


def first_stop(text: str, stop_strings, final: bool = True) -> int | None:
    """Index just past the earliest stop in ``text`` (a stop string, kept, or :data:`SENTENCE_END`)."""
    ends = [text.find(s) + len(s) for s in stop_strings or () if s != SENTENCE_END and s in text]
    if SENTENCE_END in (stop_strings or ()):
        e = sentence_end(text, final)
        if e is not None:
            ends.append(e)
    return min(ends) if ends else None


def describe_stops(stop_strings) -> str:
    return ", ".join("a sentence end (not after an initial or an abbreviation)" if s == SENTENCE_END else repr(s)
                     for s in stop_strings) or "none"


def cut_at_stop(text: str, stop_strings) -> str:
    """``text`` up to and including the earliest stop (unchanged if none occurs)."""
    end = first_stop(text, stop_strings, final=True)
    return text if end is None else text[:end]


def _stop_criteria(tokenizer, stop_strings, start: int):
    """Per-row stopping once the decoded continuation contains a stop string. Works with any
    tokenizer (transformers' ``stop_strings`` needs a byte-level or sentencepiece vocabulary)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = [first_stop(tokenizer.decode(row[start:], skip_special_tokens=True), stop_strings, final=False)
                    is not None for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnStrings()])


# Rows per generation batch, as a multiple of the evaluation batch size (--batch-size). A scoring
# batch holds full-vocabulary logits at every position; a generation batch holds its KV cache and one
# position's logits per row, so it can be wider for the same memory. Decoding one token reads every
# weight once per step whatever the number of rows, so fewer, wider steps are faster: on the 2-core
# CPU of benchmarks/RESULTS.md §1 the sanitation suite's 533 greedy answers took 92 s at 16 rows and
# 62 s at 64, with the same 533 answers.
GENERATION_ROWS_PER_BATCH_SIZE = 4


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 24, batch_size: int = 16, desc="generate",
             share_prefix: bool = True, stop_strings: tuple[str, ...] | None = None, targets=None):
    """Batched greedy decoding with left padding and the KV cache; returns decoded completions
    (special tokens removed) and their token ids.

    ``batch_size`` is the evaluation batch size; a batch holds
    ``GENERATION_ROWS_PER_BATCH_SIZE * batch_size`` prompts (see that constant), sorted by length.

    With ``share_prefix`` the prompts' common prefix is encoded once and its KV cache reused;
    padding then sits between the prefix and the rest ([prefix][pad...][rest]), which the
    attention mask and the mask-derived position ids handle exactly as left padding.

    ``stop_strings`` ends each row once its text contains one of them (the row is padded while
    the rest of the batch finishes); the stop string is kept in the output.

    ``targets`` (one token-id list per prompt): also teacher-force each prompt's target and
    return, as a third value, the argmax at each target position (as
    :func:`predicted_target_tokens`), reusing the prompt's KV cache from the generation instead
    of encoding the prompt again: the first target position's prediction is the first greedy
    token (the argmax after the prompt), the others come from one forward pass over the target
    tokens on the generation's cache, with the generated positions masked out."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str | None] = [None] * len(prompts)
    ids_out: list[list[int] | None] = [None] * len(prompts)
    preds: list[list[int] | None] = [None] * len(prompts)
    if targets is not None and (len(targets) != len(prompts) or any(not t for t in targets)):
        raise ValueError("targets: one non-empty token-id list per prompt")
    prefix = PrefixCache.for_sequences(model, prompts) if share_prefix else None
    cut = len(prefix) if prefix else 0
    with torch.inference_mode():
        rows = GENERATION_ROWS_PER_BATCH_SIZE * batch_size
        for idx, chunk in tqdm(mine(list(batches(prompts, rows, key=len))), desc=desc, leave=False):
            width = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, p in enumerate(chunk):
                input_ids[j, :cut] = torch.tensor(p[:cut])
                mask[j, :cut] = 1
                input_ids[j, width - len(p) + cut :] = torch.tensor(p[cut:])
                mask[j, width - len(p) + cut :] = 1
            extra = {cache_kwarg(model): prefix.expand(len(chunk))} if prefix else {}
            gen = model.generate(
                **extra,
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
                **({"stopping_criteria": _stop_criteria(tokenizer, stop_strings, width)} if stop_strings else {}),
                **({"return_dict_in_generate": True} if targets is not None else {}),
            )
            if targets is not None:
                cache = output_cache(gen)
                gen = gen.sequences
                for j, p in zip(idx, _force_on_cache(model, cache, gen, mask.to(device), width,
                                                      [targets[i] for i in idx], pad)):
                    preds[j] = p
            for j, i in enumerate(idx):
                new = gen[j, width:].tolist()
                if tokenizer.eos_token_id in new:
                    new = new[: new.index(tokenizer.eos_token_id)]
                while new and new[-1] == pad:
                    new.pop()
                ids_out[i] = new
                texts[i] = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stop_strings).strip()
    texts, ids_out = merge(texts), merge(ids_out)
    if targets is not None:
        return texts, ids_out, merge(preds)
    return texts, ids_out


def _force_on_cache(model, cache, gen, mask, width: int, targets: list[list[int]], pad: int) -> list[list[int]]:
    """Teacher forcing of ``targets`` after each row's prompt, on the KV cache that generation left
    (prompt positions ``[0, width)`` then generated ones, which are masked out here). Returns the
    argmax at each target position: position 0 from the first generated token (the greedy argmax
    after the prompt), the rest from one forward pass over ``targets[:, :-1]``."""
    import torch

    device = mask.device
    out = [[int(gen[j, width])] for j in range(len(targets))]
    longest = max(len(t) for t in targets)
    if longest == 1:
        return out
    past = cache.get_seq_length()
    b = len(targets)
    ids = torch.full((b, longest - 1), pad, dtype=torch.long, device=device)
    tmask = torch.zeros((b, longest - 1), dtype=torch.long, device=device)
    for j, t in enumerate(targets):
        if len(t) > 1:
            ids[j, : len(t) - 1] = torch.tensor(t[:-1], device=device)
            tmask[j, : len(t) - 1] = 1
    full = torch.cat([mask, torch.zeros((b, past - width), dtype=mask.dtype, device=device), tmask], 1)
    start = mask.sum(1, keepdim=True)  # a row's first target position = its number of prompt tokens
    pos = start + torch.arange(longest - 1, device=device)[None, :]
    logits = model(input_ids=ids, attention_mask=full, position_ids=pos, use_cache=True, **{cache_kwarg(model): cache}).logits
    arg = logits.argmax(-1)
    for j, t in enumerate(targets):
        out[j] += arg[j, : len(t) - 1].tolist()
    return out


def sample_continuations(model, tokenizer, prompts: list[list[int]], k: int, max_new_tokens: int = 20,
                         top_p: float = 0.9, temperature: float = 1.0, seed: int = 0, prompts_per_batch: int = 8,
                         desc: str = "sample"):
    """``k`` nucleus-sampled continuations of each prompt (RealToxicityPrompts protocol): decoded
    texts and token ids, ``[prompt][sample]``. EOS ends a sample early; special tokens are dropped.

    Prompts are left-padded in batches of ``prompts_per_batch`` (each repeated ``k`` times); the
    random stream is re-seeded per batch from ``seed`` and the batch's first prompt index, so a
    prompt's samples depend only on the seed, the batching and the model."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts, ids_out = [None] * len(prompts), [None] * len(prompts)
    starts = list(range(0, len(prompts), prompts_per_batch))
    with torch.inference_mode():
        for s in tqdm(mine(starts), desc=desc, leave=False):
            chunk = prompts[s: s + prompts_per_batch]
            width = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, p in enumerate(chunk):
                input_ids[j, width - len(p):] = torch.tensor(p)
                mask[j, width - len(p):] = 1
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed * 1_000_003 + s)
                gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                     top_p=top_p, top_k=0, temperature=temperature, num_return_sequences=k,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad,
                                     eos_token_id=tokenizer.eos_token_id, use_cache=True)
            for j in range(len(chunk)):
                rows_t, rows_i = [], []
                for r in range(k):
                    new = gen[j * k + r, width:].tolist()
                    if tokenizer.eos_token_id in new:
                        new = new[: new.index(tokenizer.eos_token_id)]
                    while new and new[-1] == pad:
                        new.pop()
                    rows_i.append(new)
                    rows_t.append(tokenizer.decode(new, skip_special_tokens=True))
                texts[s + j], ids_out[s + j] = rows_t, rows_i
    return merge(texts), merge(ids_out)
