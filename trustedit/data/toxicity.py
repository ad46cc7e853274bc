"""Loaders for the detoxification data: Jigsaw toxic / non-toxic sentences, ParaDetox pairs and
RealToxicityPrompts (RTP) prompts with their Perspective scores.

Every loader takes an explicit ``path`` (the folder for Jigsaw, the file otherwise) and otherwise
reads ``$TRUSTEDIT_DATA_DIR/<folder>/...`` through :mod:`trustedit.data.paths`. It returns a
:class:`ToxicityData`: a plain list of records that also carries the files it read and their
``fingerprint`` (see :func:`fingerprint`). A malformed file raises
:class:`~trustedit.errors.DataError` (one line naming file, record and field); records are
numbered from 0 (text line index, TSV data row, JSON Lines line index).

Formats (see each folder's PROVENANCE.md):

* ``jigsaw_toxic_nontoxic/{toxic,nontoxic}.txt``: one lower-cased, pre-tokenised sentence per
  line; the class is the file name (s-nlp/detox test files, Dale et al. 2021).
* ``paradetox/paradetox.tsv``: TSV with header ``toxic, neutral1, neutral2, neutral3`` (1-3
  neutral rewrites, empty cells where fewer; Logacheva et al. 2022).
* ``realtoxicityprompts/rtp_quark_val_5k.jsonl``: RTP records, ``prompt`` and ``continuation``
  objects with ``text`` and Perspective scores (``toxicity`` can be null), ``challenging`` (bool,
  absent in some RTP subsets; Gehman et al. 2020).
"""

from __future__ import annotations

import csv
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from trustedit.data.bias import BiasData, _number, file_sha256, files_fingerprint
from trustedit.data.paths import field, read_jsonl, require
from trustedit.errors import DataError, UsageError

JIGSAW_DIR = "jigsaw_toxic_nontoxic"
JIGSAW_FILES = (("toxic.txt", 1), ("nontoxic.txt", 0))
PARADETOX_FILE = "paradetox/paradetox.tsv"
PARADETOX_COLUMNS = ("toxic", "neutral1", "neutral2", "neutral3")
RTP_FILE = "realtoxicityprompts/rtp_quark_val_5k.jsonl"
RTP_MODES = ("toxic-first", "random", "challenging")

PathLike = str | os.PathLike | None


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int  # 1 = toxic, 0 = non-toxic
    source: str  # "<folder>/<file>:<line index>", e.g. "jigsaw_toxic_nontoxic/toxic.txt:0"


@dataclass(frozen=True)
class ParaPair:
    toxic: str
    neutral: str


@dataclass(frozen=True)
class RTPPrompt:
    id: str  # the record's line index in its file, zero-padded to 6 digits ("000042")
    text: str
    toxicity: float | None  # Perspective toxicity of the prompt text (None where RTP has null)
    challenging: bool  # RTP's flag (False where the file has no such field)
    continuation: str | None  # the original OpenWebText continuation, if the file has one
    continuation_toxicity: float | None


class ToxicityData(BiasData):
    """The loaded records, plus ``name``, ``files`` (paths read) and ``fingerprint``."""


def fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """``sha256:`` + SHA-256 over ``name\\0sha256(content)\\n`` of each data file, in the given
    order (file names only, so it does not depend on where the data folder lives). A folder
    stands for its files (sorted by name, hidden files skipped)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(p, problem="missing")
    return files_fingerprint(files)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(path, problem="missing")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, problem=f"not UTF-8 text ({e.reason})") from None


# ---------------------------------------------------------------------------------------------
# Jigsaw
# ---------------------------------------------------------------------------------------------


def load_jigsaw(path: PathLike = None) -> ToxicityData:
    """Jigsaw sentences as :class:`LabelledText` (``toxic.txt`` then ``nontoxic.txt``, file
    order; blank lines skipped). ``path``: the folder holding both files."""
    folder = Path(require(JIGSAW_DIR, path))
    if not folder.is_dir():
        raise DataError(folder, problem=f"expected the folder holding {' and '.join(f for f, _ in JIGSAW_FILES)}")
    out, files = [], []
    for name, label in JIGSAW_FILES:
        f = folder / name
        n = 0
        for i, line in enumerate(_read_text(f).splitlines()):
            if line.strip():
                if "\t" in line:
                    raise DataError(f, i, "text", "contains a tab (expected one sentence per line)")
                out.append(LabelledText(line.strip(), label, f"{folder.name}/{name}:{i}"))
                n += 1
        if n == 0:
            raise DataError(f, problem="no sentences")
        files.append(f)
    return ToxicityData(out, "jigsaw", files)


# ---------------------------------------------------------------------------------------------
# ParaDetox
# ---------------------------------------------------------------------------------------------


def load_paradetox(path: PathLike = None) -> ToxicityData:
    """ParaDetox as :class:`ParaPair`, one pair per non-empty neutral rewrite (file order).
    Rows with no rewrite at all (six in the release) give no pair."""
    p = Path(require(PARADETOX_FILE, path))
    if not p.is_file():
        raise DataError(p, problem="missing")
    try:
        with open(p, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise DataError(p, problem="empty file")
            header = [h.strip() for h in header]
            for col in PARADETOX_COLUMNS[:2]:
                if col not in header:
                    raise DataError(p, None, col, f"missing column (header: {header})")
            cols = [header.index(c) for c in PARADETOX_COLUMNS if c in header]
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise DataError(p, problem=f"not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        raise DataError(p, problem=f"invalid TSV ({e})") from None
    out = []
    for i, row in enumerate(rows):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(p, i, None, f"{len(row)} columns, the header has {len(header)}")
        toxic = row[cols[0]].strip()
        if not toxic:
            raise DataError(p, i, "toxic", "empty")
        out += [ParaPair(toxic, row[c].strip()) for c in cols[1:] if row[c].strip()]
    if not out:
        raise DataError(p, problem="no toxic/neutral pairs")
    return ToxicityData(out, "paradetox", [p])


# ---------------------------------------------------------------------------------------------
# Register
# ---------------------------------------------------------------------------------------------

_SPACE_BEFORE = re.compile(r" +([,.!?;:%)\]}]|n't\b|'(?:s|re|ve|ll|d|m)\b)", re.IGNORECASE)
_SPACE_AFTER = re.compile(r"([(\[{$]) +")
_LONE_I = re.compile(r"\bi\b(?=(?:'[a-z]+)?(?:\W|$))")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")


def normalize_text(text: str) -> str:
    """Undo the Jigsaw / ParaDetox preprocessing: join the split punctuation and clitics
    (``"it 's , i think ."`` -> ``"It's, I think."``), capitalise sentence starts and the pronoun
    "i". Proper nouns stay lower-cased (that would need a true-caser). Idempotent on ordinary text.

    Why: the toxic side of both sources is lower-cased and pre-tokenised while ParaDetox's neutral
    rewrites are ordinary text, so adapters trained on the raw files also learn (and differ by) the
    typography; normalising both sides leaves toxicity as the difference."""
    t = " ".join(text.split())
    t = _SPACE_BEFORE.sub(r"\1", t)
    t = _SPACE_AFTER.sub(r"\1", t)
    t = _LONE_I.sub("I", t)
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), t)


# ---------------------------------------------------------------------------------------------
# RealToxicityPrompts
# ---------------------------------------------------------------------------------------------


def _score(p: Path, i: int, obj: dict, name: str) -> float | None:
    value = obj.get("toxicity")
    return None if value is None else _number(p, i, value, f"{name}.toxicity", 0, 1)


def load_rtp(path: PathLike = None) -> ToxicityData:
    """RealToxicityPrompts records as :class:`RTPPrompt` (file order)."""
    p = Path(require(RTP_FILE, path))
    out = []
    for i, rec in enumerate(read_jsonl(p)):
        prompt = field(p, i, rec, "prompt", dict)
        text = prompt.get("text")
        if not isinstance(text, str):
            raise DataError(p, i, "prompt.text", "missing" if text is None else f"expected str, got {type(text).__name__}")
        if not text.strip():
            raise DataError(p, i, "prompt.text", "empty")
        challenging = rec.get("challenging", False)
        if not isinstance(challenging, bool):
            raise DataError(p, i, "challenging", f"expected bool, got {type(challenging).__name__}")
        cont = rec.get("continuation")
        if cont is not None and not isinstance(cont, dict):
            raise DataError(p, i, "continuation", f"expected an object, got {type(cont).__name__}")
        ctext = None if cont is None else cont.get("text")
        if ctext is not None and not isinstance(ctext, str):
            raise DataError(p, i, "continuation.text", f"expected str, got {type(ctext).__name__}")
        out.append(RTPPrompt(f"{i:06d}", text, _score(p, i, prompt, "prompt"), challenging, ctext,
                             None if cont is None else _score(p, i, cont, "continuation")))
    if not out:
        raise DataError(p, problem="no prompts")
    return ToxicityData(out, "realtoxicityprompts", [p])


def select_rtp(prompts: Sequence[RTPPrompt], n: int | None, seed: int = 0, mode: str = "toxic-first") -> list[RTPPrompt]:
    """A fixed, deterministic selection of ``n`` prompts (all when ``n`` is None); the result does
    not depend on the order of ``prompts``.

    * ``toxic-first``: challenging prompts first, then by descending Perspective toxicity of the
      prompt (unknown toxicity last), ties by id; ``seed`` is unused.
    * ``random``: a seeded uniform sample (shuffle of the prompts sorted by id, first ``n``; so a
      smaller ``n`` with the same seed is a prefix of a larger one).
    * ``challenging``: only prompts flagged challenging, sampled as in ``random``.
    """
    if mode not in RTP_MODES:
        raise UsageError(f"RTP selection mode must be one of {', '.join(RTP_MODES)}, got {mode!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise UsageError(f"number of prompts must be an integer >= 0, got {n!r}")
    pool = sorted(prompts, key=lambda r: r.id)
    if len({r.id for r in pool}) != len(pool):
        raise UsageError("RTP prompts have duplicate ids (mixing files? select from one file's prompts)")
    if mode == "challenging":
        pool = [r for r in pool if r.challenging]
    if n is not None and n > len(pool):
        what = "challenging prompts" if mode == "challenging" else "prompts"
        raise UsageError(f"asked for {n} RTP {what}, only {len(pool)} available")
    if mode == "toxic-first":
        pool.sort(key=lambda r: (not r.challenging, r.toxicity is None, -(r.toxicity or 0.0), r.id))
    else:
        random.Random(seed).shuffle(pool)
    return pool if n is None else pool[:n]


def validation_rtp(prompts: Sequence[RTPPrompt], reported, n: int, seed: int = 0) -> list[RTPPrompt]:
    """The ``n`` prompts a fluency-budget search may read: the next ones in toxic-first order after
    the ``reported`` prompts (ids, or prompts), never one of them. Deterministic, like
    :func:`select_rtp`; the ``ids`` of the reported sets fix the result."""
    skip = {getattr(r, "id", r) for r in reported}
    if n == 0:
        return []
    order = select_rtp(prompts, None, seed, "toxic-first")
    out = [p for p in order if p.id not in skip][:n]
    if len(out) < n:
        raise UsageError(f"asked for {n} RTP validation prompts, only {len(out)} are not reported")
    return out


__all__ = ["LabelledText", "ParaPair", "RTPPrompt", "ToxicityData", "fingerprint", "file_sha256", "load_jigsaw",
           "load_paradetox", "load_rtp", "normalize_text", "select_rtp", "validation_rtp"]
