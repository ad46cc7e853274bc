"""Edit requests of the locate-then-edit editors, and how their text becomes token ids.

A request says: in ``prompt`` (which contains ``subject``), the model should continue with
``target_new``. The editors never join prompt and target as strings and re-tokenise the whole
(EasyEdit's source of misaligned targets): :func:`encode_request` tokenises the prompt, then the
prompt with the target appended, and keeps the target's ids only where the prompt's ids are a
prefix of the whole; a tokenizer that would merge the boundary (so that the prompt's ids change)
gets the target tokenised on its own, space-led. Either way ``prompt_ids + target_ids`` is what the
model is trained and scored on, and :func:`subject_last_index` finds the subject's last token from
character offsets, not by searching for its ids (which differ with a leading space).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EditRequest:
    prompt: str
    subject: str
    target_new: str
    id: str = ""

    def check(self, where: str = "edit request", subject: bool = True):
        """A one-line error naming the request when a field is missing or (``subject``: for the editors
        that locate the subject) the subject is not in the prompt."""
        from trustedit.errors import DataError

        for f in ("prompt", "target_new"):
            v = getattr(self, f)
            if not isinstance(v, str) or not v.strip():
                raise DataError(where, self.id or None, f, "missing or empty")
        if not subject:
            return self
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise DataError(where, self.id or None, "subject", "missing or empty")
        if self.subject not in self.prompt:
            raise DataError(where, self.id or None, "subject",
                            f"{self.subject!r} does not occur in the prompt (ROME-style editors need it there)")
        return self


def encode_request(tokenizer, prompt_text: str, target: str, bos: bool = False) -> tuple[list[int], list[int]]:
    """``(prompt_ids, target_ids)`` for ``prompt_text`` followed by ``" " + target`` (no space after a
    prompt that ends in whitespace, such as a chat template's assistant header)."""
    sep = "" if prompt_text[-1:].isspace() else " "
    pre = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
    p = pre + list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    whole = pre + list(tokenizer(prompt_text + sep + target.strip(), add_special_tokens=False)["input_ids"])
    if whole[:len(p)] == p and len(whole) > len(p):
        return p, whole[len(p):]
    return p, list(tokenizer(sep + target.strip(), add_special_tokens=False)["input_ids"])


def subject_last_index(tokenizer, text: str, subject: str, bos: bool = False, start: int = 0) -> int:
    """Index (in the ids of ``text``, after an optional BOS) of the token holding the last character
    of ``subject``'s first appearance in ``text`` at or after character ``start`` (a context prefix
    before the prompt is skipped this way)."""
    i = text.find(subject, start)
    if i < 0:
        raise ValueError(f"subject {subject!r} not in {text[start:]!r}")
    last_char = i + len(subject) - 1
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    for j, (a, b) in enumerate(enc["offset_mapping"]):
        if a <= last_char < b:
            return j + (1 if bos and tokenizer.bos_token_id is not None else 0)
    raise ValueError(f"no token covers character {last_char} of {text!r}")


class RequestBatch(list):
    """The requests of one ``fit`` of an editor (a list of :class:`EditRequest`), with ``state``: a
    dict the job keeps across the fits of one sequential run (AlphaEdit keeps the keys it has
    already edited there; an editor without memory ignores it)."""

    def __init__(self, requests=(), state: dict | None = None, info: dict | None = None):
        super().__init__(requests)
        self.state = {} if state is None else state
        self.info = dict(info or {})  # where the requests came from, for results.json's training_data

    def describe(self) -> dict:
        return self.info


def as_requests(train, method: str, subject: bool = True) -> RequestBatch:
    """``train`` (one :class:`EditRequest`, a list of them, or a :class:`RequestBatch`) as a checked
    :class:`RequestBatch`; anything else is a usage error naming the method. ``subject=False``: the
    editor does not locate the subject (MEND, LoRA, GRACE, SERAC, IKE), which need not be in the prompt."""
    from trustedit.errors import UsageError

    if isinstance(train, EditRequest):
        train = [train]
    if not isinstance(train, (list, tuple)) or not all(isinstance(r, EditRequest) for r in train):
        raise UsageError(f"{method} edits requests (prompt, subject, target_new): run it with `trustedit edit`, "
                         f"not on {type(train).__name__}")
    if not train:
        raise UsageError(f"{method}: no edit request to apply")
    return RequestBatch([r.check(subject=subject) for r in train], getattr(train, "state", None))


def prompt_bos(tokenizer) -> bool:
    """Whether the editors put BOS before a request's prompt: as the tokenizer does by default."""
    return bool(getattr(tokenizer, "add_bos_token", False)) and tokenizer.bos_token_id is not None
