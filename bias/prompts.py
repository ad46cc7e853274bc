"""Prompts that drive the debiasing methods (DAMA, INLP): "The nurse said that" -> he / she.

The training set of DAMA (Limisiewicz et al. 2024) is ``$TRUSTEDIT_DATA_DIR/dama/train_dama.json``:
219 professions x 11 templates, each record ``{"prompt", "subject", "target_new": {"str"},
"gender_score"}`` where ``gender_score`` is the profession's stereotypical score in [-1, 1]
(positive: male-stereotyped) and ``target_new`` the anti-stereotypical pronoun ("she" when the
score is >= 0, else "he"). :func:`generate_prompts` builds the same records from any word list and
any templates, so other attribute pairs can be debiased with a user's own lists;
``generate_prompts(<the training professions of professions.json>)`` reproduces train_dama.json
exactly (tested).

Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

TRAIN_FILE = "dama/train_dama.json"
PROFESSIONS_FILE = "dama/professions.json"

# The 11 templates of train_dama.json; "{}" is the subject ("The nurse").
DEFAULT_TEMPLATES = (
    "{} wanted that", "{} laughed because", "{} went home because", "{} desired that", "{} wished that",
    "{} cried because", "{} ate because", "{} said that", "{} ran because", "{} stayed up because",
    "{} whispered that",
)
DEFAULT_PAIR = ("he", "she")  # (positive-score word, negative-score word)


@dataclass(frozen=True)
class BiasPrompt:
    """One prompt. ``score`` > 0: the subject is stereotypically associated with ``pair[0]``
    ("he" by default), < 0 with ``pair[1]``; ``target`` is the anti-stereotypical word."""

    prompt: str
    subject: str
    score: float = 0.0
    target: str | None = None

    def to_record(self) -> dict:
        """The train_dama.json record."""
        return {"prompt": self.prompt, "subject": self.subject, "target_new": {"str": self.target},
                "gender_score": self.score}


def as_prompts(items) -> list[BiasPrompt]:
    """BiasPrompts from BiasPrompts, train_dama.json-style dicts, or any objects with ``prompt``
    and ``subject`` attributes (and optionally ``gender_score`` / ``score``, ``target``), such as
    :class:`trustedit.data.bias.DamaTrainItem`."""
    out = []
    for i, x in enumerate(items):
        if isinstance(x, BiasPrompt):
            out.append(x)
        elif isinstance(x, dict):
            target = x.get("target_new", {}).get("str") if isinstance(x.get("target_new"), dict) else x.get("target")
            out.append(BiasPrompt(str(x["prompt"]), str(x.get("subject", "")), float(x.get("gender_score", x.get("score", 0.0))),
                                  target))
        elif hasattr(x, "prompt") and hasattr(x, "subject"):
            score = getattr(x, "gender_score", getattr(x, "score", 0.0))
            out.append(BiasPrompt(str(x.prompt), str(x.subject), float(score or 0.0), getattr(x, "target", None)))
        else:
            raise TypeError(f"prompt {i}: expected BiasPrompt, dict or an object with prompt/subject, got {type(x).__name__}")
    return out


def load_train_prompts(path: str | Path | None = None) -> list[BiasPrompt]:
    """``path`` (a train_dama.json-style file) or ``$TRUSTEDIT_DATA_DIR/dama/train_dama.json``."""
    from trustedit.data.paths import field, read_json, require
    from trustedit.errors import DataError

    p = require(TRAIN_FILE, path)
    rows = read_json(p)
    if not isinstance(rows, list) or not rows:
        raise DataError(p, problem="expected a non-empty JSON list of prompt records")
    out = []
    for i, r in enumerate(rows):
        prompt = field(p, i, r, "prompt")
        subject = field(p, i, r, "subject")
        score = field(p, i, r, "gender_score", (int, float)) if "gender_score" in r else 0.0
        target = r.get("target_new", {}).get("str") if isinstance(r.get("target_new"), dict) else None
        if subject and subject not in prompt:
            raise DataError(p, i, "subject", f"{subject!r} does not occur in the prompt {prompt!r}")
        out.append(BiasPrompt(prompt, subject, float(score), target))
    return out


def load_professions(path: str | Path | None = None) -> list[tuple[str, float, float]]:
    """``[(name, factual_score, stereotypical_score)]`` from professions.json (names with spaces)."""
    from trustedit.data.paths import read_json, require
    from trustedit.errors import DataError

    p = require(PROFESSIONS_FILE, path)
    rows = read_json(p)
    out = []
    for i, r in enumerate(rows):
        if not (isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)):
            raise DataError(p, i, None, "expected [name, factual_score, stereotypical_score]")
        out.append((r[0].replace("_", " "), float(r[1]), float(r[2])))
    return out


def generate_prompts(words, templates=DEFAULT_TEMPLATES, pair=DEFAULT_PAIR, article: str = "The") -> list[BiasPrompt]:
    """Prompts for every word x template.

    ``words``: names (score 0), ``(name, score)`` pairs, ``(name, factual, stereotypical)``
    triples as in professions.json, or objects with ``name`` and ``stereotypical`` (as
    :class:`trustedit.data.bias.Profession`); the stereotypical score is used. Underscores become
    spaces.
    ``templates`` hold one ``{}`` for the subject (``article + " " + name``). ``pair`` is the
    attribute pair (positive-score word, negative-score word); each record's ``target`` is the
    anti-stereotypical one (``pair[1]`` when the score is >= 0), as in train_dama.json.
    """
    templates = list(templates)
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}'")
    out = []
    for w in words:
        if isinstance(w, str):
            name, score = w, 0.0
        elif hasattr(w, "name") and hasattr(w, "stereotypical"):
            name, score = w.name, float(w.stereotypical)
        elif len(w) == 2:
            name, score = w[0], float(w[1])
        elif len(w) == 3:
            name, score = w[0], float(w[2])
        else:
            raise ValueError(f"word entry {w!r}: expected a name, (name, score) or (name, factual, stereotypical)")
        subject = f"{article} {name.replace('_', ' ')}".strip()
        target = pair[1] if score >= 0 else pair[0]
        out += [BiasPrompt(t.format(subject), subject, score, target) for t in templates]
    return out


def write_prompts(prompts, path: str | Path) -> Path:
    """Write prompts as a train_dama.json-style file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([p.to_record() for p in as_prompts(prompts)], indent=1) + "\n", encoding="utf-8")
    return path


def fingerprint(prompts) -> str:
    """SHA-256 of the prompts (text, subject, score), order-sensitive."""
    h = hashlib.sha256()
    for p in as_prompts(prompts):
        h.update(json.dumps([p.prompt, p.subject, p.score]).encode())
    return "sha256:" + h.hexdigest()
