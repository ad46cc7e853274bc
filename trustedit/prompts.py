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

from dataclasses import dataclass

IGNORE = -100


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


def collate(pairs: list[Pair], pad_id: int, max_length: int | None = None):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors.

    Sequences longer than ``max_length`` lose prompt tokens from the left (never target tokens).
    """
    import torch

    rows = []
    for p in pairs:
        ids, lab = p.input_ids, p.labels
        if max_length is not None and len(ids) > max_length:
            if len(p.target) >= max_length:
                raise ValueError(f"target of {len(p.target)} tokens does not fit max_length={max_length}")
            ids, lab = ids[-max_length:], lab[-max_length:]
        rows.append((ids, lab))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
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


def token_nll(model, batch):
    """Per-row summed NLL and number of target tokens, plus the next-token argmax per position."""
    import torch

    device = next(model.parameters()).device
    b = {k: v.to(device) for k, v in batch.items()}
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    logits, labels = shift_for_next_token(out.logits, b["labels"], b["input_ids"])
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


def predicted_target_tokens(model, pairs: list[Pair], pad_id: int, batch_size: int = 16, desc="teacher-forced"):
    """Teacher forcing: for each pair, the model's argmax at each target position (one list of
    ids per pair, aligned with ``pair.target``). Used by Edit Succ. and Locality alike."""
    import torch
    from tqdm.auto import tqdm

    out: list[list[int] | None] = [None] * len(pairs)
    with torch.inference_mode():
        for idx, chunk in tqdm(list(batches(pairs, batch_size, key=lambda p: len(p.input_ids))), desc=desc, leave=False):
            batch = collate(chunk, pad_id)
            _, _, pred, labels = token_nll(model, batch)
            for j, i in enumerate(idx):
                keep = labels[j] != IGNORE
                out[i] = pred[j][keep.to(pred.device)].tolist()
    return out


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 24, batch_size: int = 16, desc="generate"):
    """Batched greedy decoding with left padding and the KV cache; returns decoded completions
    (special tokens removed) and their token ids."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str | None] = [None] * len(prompts)
    ids_out: list[list[int] | None] = [None] * len(prompts)
    with torch.inference_mode():
        for idx, chunk in tqdm(list(batches(prompts, batch_size, key=len)), desc=desc, leave=False):
            width = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, p in enumerate(chunk):
                input_ids[j, width - len(p) :] = torch.tensor(p)
                mask[j, width - len(p) :] = 1
            gen = model.generate(
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
            )
            for j, i in enumerate(idx):
                new = gen[j, width:].tolist()
                if tokenizer.eos_token_id in new:
                    new = new[: new.index(tokenizer.eos_token_id)]
                while new and new[-1] == pad:
                    new.pop()
                ids_out[i] = new
                texts[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    return texts, ids_out
