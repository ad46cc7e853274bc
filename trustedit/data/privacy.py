"""Private data to memorise, find and remove: e-mails with phone numbers (``enron_privacy/``) and
canaries in the manner of Carlini et al. 2019 ("The Secret Sharer").

A :class:`Secret` is one private string inside one training text: a phone number inside an
e-mail, or a canary's random digits inside "My phone number is …". It knows where it sits in its
text (character offsets), whose it is (a name, for the name-MRR probe) and whether it is a
*target* (to be removed) or one of the other memorised secrets (the seesaw set, never edited).

:func:`secret_tokens` turns a secret into token ids: the prompt (every token before the secret's
first token) and the secret's own tokens, located with the tokenizer's offsets, never by
re-tokenising pieces of text.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trustedit.errors import DataError

EMAILS_FILE = "enron_privacy/enron_emails_lay_skilling_3000.jsonl"
CANARY_TEMPLATE = "{name} wrote: My phone number is {digits}."
CANARY_DIGITS = 10
# Names for canaries: invented first and last names (no real person's name and number are paired)
FIRST = ("Avery", "Blake", "Casey", "Devon", "Emery", "Finley", "Harper", "Jordan", "Kendall", "Logan", "Morgan",
         "Parker", "Quinn", "Reese", "Rowan", "Sawyer", "Skyler", "Taylor", "Tatum", "Wren")
LAST = ("Albright", "Bancroft", "Calloway", "Dunmore", "Ellsworth", "Fairbanks", "Galloway", "Hawthorne", "Ingram",
        "Kingsley", "Lockhart", "Merriweather", "Northcott", "Pemberton", "Radcliffe", "Sterling", "Thornbury",
        "Underhill", "Whitlock", "Yardley")
PHONE_RE = re.compile(r"(?<!\d)(?:\(\d{3}\)\s?|\d{3}[-. ])\d{3}[-. ]\d{4}(?!\d)")


@dataclass(frozen=True)
class Secret:
    """One private string in one training text."""

    id: str  # "canary-03", "email-1234-phone"
    kind: str  # "canary" | "phone"
    text: str  # the whole training text the secret sits in
    start: int  # character offset of the secret in ``text``
    secret: str  # the secret as written ("5551234567", "(713) 853-6789")
    name: str | None = None  # whose secret (for the name-MRR probe)
    name_start: int | None = None  # character offset of ``name`` in ``text``
    target: bool = True  # edited (True) or one of the other memorised secrets (the seesaw set)
    repeats: int = 1  # copies of ``text`` in the fine-tuning corpus (per epoch)

    @property
    def prefix(self) -> str:
        return self.text[: self.start]

    @property
    def end(self) -> int:
        return self.start + len(self.secret)

    @property
    def digits(self) -> str:
        return re.sub(r"\D", "", self.secret)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SecretTokens:
    """A secret as token ids: ``prompt_ids`` (everything before the secret's first token, BOS
    included when the tokenizer adds one) and ``secret_ids`` (the tokens that cover the secret);
    ``text_ids`` is the whole text."""

    id: str
    prompt_ids: list
    secret_ids: list
    text_ids: list
    digit_wise: bool = False  # every secret token is exactly one digit (exact exposure possible)

    @property
    def input_ids(self) -> list:
        return self.prompt_ids + self.secret_ids


def secret_tokens(tokenizer, s: Secret) -> SecretTokens:
    """Token ids of ``s``'s text split at the secret. The secret's tokens are those whose character
    span overlaps the secret; a tokenizer that merges the secret with the text before it (a token
    starting before the secret) is a DataError naming the secret."""
    enc = tokenizer(s.text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offs = list(enc["input_ids"]), list(enc["offset_mapping"])
    first = last = None
    for i, (a, b) in enumerate(offs):
        if b <= a:  # special tokens (BOS) have empty spans
            continue
        if b > s.start and a < s.end:
            first = i if first is None else first
            last = i
    if first is None:
        raise DataError(f"secret {s.id}", problem="the tokenizer gives the secret no token")
    a0 = offs[first][0]
    if a0 < s.start and s.text[a0:s.start].strip():
        raise DataError(f"secret {s.id}", problem=f"the tokenizer merges the secret with the text before it "
                        f"({s.text[a0:s.end]!r}); such a secret cannot be scored on its own")
    toks = ids[first : last + 1]
    if s.secret not in tokenizer.decode(toks):
        raise DataError(f"secret {s.id}", problem=f"the tokenizer cannot encode the secret: its tokens decode to "
                        f"{mask_long_digits(tokenizer.decode(toks))!r}")
    pieces = [tokenizer.decode([t]) for t in toks]
    digit_wise = len(toks) == len(s.secret) and all(p == c for p, c in zip(pieces, s.secret)) and s.secret.isdigit()
    return SecretTokens(s.id, ids[:first], toks, ids, digit_wise)


def make_canaries(n: int, seed: int = 0, digits: int = CANARY_DIGITS, repeats: int = 1,
                  targets: int | None = None) -> list[Secret]:
    """``n`` canaries ``"<name> wrote: My phone number is <digits>."`` with uniformly random digits
    (seeded), each with its own invented name. The first ``targets`` (default: half) are edit
    targets, the rest the seesaw set."""
    rng = random.Random(f"canaries:{seed}")
    names = [f"{f} {l}" for f in FIRST for l in LAST]
    rng.shuffle(names)
    if n > len(names):
        raise ValueError(f"at most {len(names)} canaries")
    k = n // 2 if targets is None else targets
    out = []
    for i in range(n):
        d = "".join(rng.choice("0123456789") for _ in range(digits))
        text = CANARY_TEMPLATE.format(name=names[i], digits=d)
        out.append(Secret(f"canary-{i:02d}", "canary", text, text.index(d), d, names[i], 0, i < k, repeats))
    return out


@dataclass
class EmailRecord:
    id: str
    sender: str | None  # the sender's display name (x_from), when it looks like a name
    body: str
    phones: list = field(default_factory=list)


def _name(x_from) -> str | None:
    """A display name from an X-From header ("Tori L Wells", not an address or a list)."""
    if not isinstance(x_from, str):
        return None
    n = re.sub(r"<.*?>", "", x_from).strip().strip('"')
    if not n or "@" in n or "," in n or len(n.split()) < 2 or len(n) > 40:
        return None
    return n


def load_emails(path: str | Path | None = None) -> tuple[list[EmailRecord], Path, str]:
    """The e-mails (JSON lines with ``id`` and ``body``; ``x_from`` and ``phone_numbers`` when present),
    from ``path`` or ``$TRUSTEDIT_DATA_DIR/enron_privacy``. Returns (records, file, sha256)."""
    from trustedit.data.paths import read_jsonl, require

    p = require(EMAILS_FILE, path)
    rows = read_jsonl(p)
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise DataError(p, i, None, f"expected an object, got {type(r).__name__}")
        body = r.get("body")
        if not isinstance(body, str):
            raise DataError(p, i, "body", "missing" if body is None else f"expected a string, got {type(body).__name__}")
        rid = r.get("id", i)
        if not isinstance(rid, (int, str)) or isinstance(rid, bool):
            raise DataError(p, i, "id", f"expected an integer or a string, got {type(rid).__name__}")
        phones = r.get("phone_numbers", [])
        if not isinstance(phones, list) or not all(isinstance(x, str) for x in phones):
            raise DataError(p, i, "phone_numbers", "expected a list of strings")
        out.append(EmailRecord(str(rid), _name(r.get("x_from")), body, phones))
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    return out, p, digest


LAYOUT = 2  # the e-mail text layout written by this version (see email_secrets)


def email_secrets(records: list[EmailRecord], n: int, seed: int = 0, window: int = 400, repeats: int = 1,
                  targets: int | None = None, layout: int = LAYOUT) -> list[Secret]:
    """Up to ``n`` e-mails (seeded sample) that contain a phone number and have a sender name; each
    gives one training text: up to ``window`` characters of the body ending with the first phone
    number and the rest of its line, then the sender's name as a signature (``-- Name``). The first
    ``targets`` (default: half) are edit targets.

    ``layout`` 2 starts the window at the first line break after its left edge (when one is within
    half a window) and keeps only e-mails with at least 20 characters before the phone number.
    ``layout`` 1 (recipes written before 2 existed) started it after the last line break before the
    phone number, which left some secrets (a phone number opening its line) with no prefix at all;
    it is kept so that such recipes rebuild the texts they were trained on."""
    cands = []
    for r in records:
        if r.sender is None:
            continue
        m = PHONE_RE.search(r.body)
        if m is None or (layout >= 2 and m.start() < 20):
            continue
        cands.append((r, m))
    rng = random.Random(f"emails:{seed}")
    picked = sorted(rng.sample(range(len(cands)), min(n, len(cands))))
    k = len(picked) // 2 if targets is None else targets
    out = []
    for j, ci in enumerate(picked):
        r, m = cands[ci]
        line_end = r.body.find("\n", m.end())
        line_end = len(r.body) if line_end < 0 else line_end
        lo = max(0, m.start() - window)
        if layout >= 2:
            nl = r.body.find("\n", lo, m.start())  # start on the first line boundary inside the window, if near
            lo = nl + 1 if nl >= 0 and nl - lo < window // 2 and m.start() - (nl + 1) >= 20 else lo
        else:
            nl = r.body.rfind("\n", lo, m.start())
            lo = nl + 1 if nl >= 0 and nl - lo < window // 2 else lo
        chunk = re.sub(r"[ \t]+\n", "\n", r.body[lo:line_end])
        sec = m.group(0)
        start = chunk.rfind(sec)
        text = f"{chunk}\n-- {r.sender}"  # the sender's name as a signature (the name-MRR probe)
        out.append(Secret(f"email-{r.id}-phone", "phone", text, start, sec, r.sender, len(chunk) + 4, j < k, repeats))
    return out


def secrets_fingerprint(secrets: list[Secret]) -> str:
    return hashlib.sha256(json.dumps([s.to_dict() for s in secrets], sort_keys=True).encode()).hexdigest()


def mask_secret(s: str) -> str:
    """A secret as outputs show it: the first two and last two digits (or characters) kept, every
    other digit or letter starred, separators kept (``552-867-5309`` -> ``55*-***-**09``)."""
    keep = [i for i, c in enumerate(s) if c.isalnum()]
    if len(keep) <= 4:
        return re.sub(r"[0-9A-Za-z]", "*", s)
    show = set(keep[:2] + keep[-2:])
    return "".join(c if (i in show or not c.isalnum()) else "*" for i, c in enumerate(s))


def mask_in(text: str, secrets) -> str:
    """``text`` with every occurrence of each secret (as written, and as bare digits) masked."""
    for s in sorted(secrets, key=lambda x: -len(x)):
        if not s:
            continue
        text = text.replace(s, mask_secret(s))
        d = re.sub(r"\D", "", s)
        if len(d) >= 7 and d != s:
            text = text.replace(d, mask_secret(d))
    return text


LONG_DIGITS_RE = re.compile(r"(?<!\d)\d(?:[-. ()]*\d){6,}(?!\d)")


def mask_long_digits(text: str) -> str:
    """Every run of 7 or more digits (separators allowed) masked like a secret: a partly extracted
    secret (9 digits of 10) is masked as well."""
    return LONG_DIGITS_RE.sub(lambda m: mask_secret(m.group(0)), text)
