"""Loaders for the bias benchmarks: DAMA gender prompts, WinoBias, StereoSet (dev) and CrowS-Pairs.

Every loader takes an explicit ``path`` (the file, or the folder for WinoBias) and otherwise reads
``$TRUSTEDIT_DATA_DIR/<folder>/...`` through :mod:`trustedit.data.paths`. It returns a
:class:`BiasData`: a plain list of records (dataclasses or strings) that also carries the files it
read and their ``fingerprint`` (SHA-256 over each file's name and SHA-256), for results files.
A malformed file raises :class:`~trustedit.errors.DataError` (one line naming file, record and
field); records are numbered from 0 (JSON list index, JSON Lines / text line index, CSV data row).

Formats (see each folder's PROVENANCE.md):

* ``dama/professions.json``: ``[[profession, factual_score, stereotypical_score], ...]`` (scores
  in [-1, 1], negative = female); ``dama/test_dama.json``: prompt strings ("The nurse said that");
  ``dama/train_dama.json``: ``{"prompt", "subject", "target_new": {"str"}, "gender_score"}``
  (Limisiewicz et al. 2024, DAMA).
* ``winobias/{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}``: ``<index> <sentence>`` with the
  gold antecedent and the pronoun(s) in ``[...]``; ``{male,female}_occupations.txt``
  (Zhao et al. 2018).
* ``stereoset/stereoset_dev.jsonl``: flattened dev set, one example per line with its three
  gold-labelled sentences (Nadeem et al. 2021).
* ``crows_pairs/crows_pairs_anonymized.csv`` (Nangia et al. 2020).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from trustedit.data.paths import field, fingerprint, read_json, read_jsonl, require
from trustedit.errors import DataError, TrusteditError

DAMA_PROFESSIONS = "dama/professions.json"
DAMA_TEST = "dama/test_dama.json"
DAMA_TRAIN = "dama/train_dama.json"
WINOBIAS_DIR = "winobias"
STEREOSET_FILE = "stereoset/stereoset_dev.jsonl"
CROWS_FILE = "crows_pairs/crows_pairs_anonymized.csv"

PathLike = str | os.PathLike | None


# ---------------------------------------------------------------------------------------------
# common
# ---------------------------------------------------------------------------------------------


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def files_fingerprint(files: Iterable[Path]) -> str:
    """``sha256:`` + SHA-256 over ``name\\0sha256(content)\\n`` for each file in reading order
    (file names only, so the fingerprint does not depend on where the data folder lives)."""
    return fingerprint((Path(f).name, file_sha256(Path(f))) for f in files)


class BiasData(list):
    """The loaded records, plus ``name``, ``files`` (paths read), ``fingerprint`` (of those
    files, whatever ``limit`` kept) and ``limit``."""

    def __init__(self, items: Iterable, name: str, files: Sequence[Path], limit: int | None = None):
        super().__init__(items)
        self.name = name
        self.files = [str(f) for f in files]
        self.limit = limit
        self.fingerprint = files_fingerprint(files)

    def describe(self) -> dict:
        return {"name": self.name, "files": self.files, "fingerprint": self.fingerprint, "n": len(self),
                "limit": self.limit}


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise TrusteditError(f"limit must be an integer >= 0, got {limit!r}")


def _cap(rows: list, limit: int | None) -> list:
    return rows if limit is None else rows[:limit]


def _text(path: Path, index, record, name: str) -> str:
    """A required, non-empty string field."""
    value = field(path, index, record, name, str)
    if not value.strip():
        raise DataError(path, index, name, "empty")
    return value


def _number(path: Path, index, value, name: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(path, index, name, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise DataError(path, index, name, f"expected a finite number, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise DataError(path, index, name, f"{value} is outside [{lo}, {hi}]")
    return float(value)


def _json_list(path: Path) -> list:
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(path, problem=f"expected a JSON list, got {type(rows).__name__}")
    return rows


# ---------------------------------------------------------------------------------------------
# DAMA
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profession:
    """One row of DAMA's ``professions.json``: ``name`` as in the file (words joined by ``_``),
    ``factual`` and ``stereotypical`` gender scores in [-1, 1] (negative = female)."""

    name: str
    factual: float
    stereotypical: float


@dataclass
class DamaTrainItem:
    prompt: str
    subject: str
    target: str  # target_new.str: the pronoun the debiasing objective uses ("he" / "she")
    gender_score: float


PROFESSION_FIELDS = ("profession", "factual_score", "stereotypical_score")


def load_dama_professions(path: PathLike = None) -> BiasData:
    """DAMA's profession table as :class:`Profession` records (file order)."""
    p = require(DAMA_PROFESSIONS, path)
    out, seen = [], set()
    for i, rec in enumerate(_json_list(p)):
        if not isinstance(rec, list) or len(rec) != 3:
            raise DataError(p, i, None, "expected [profession, factual_score, stereotypical_score]")
        name, f, s = rec
        if not isinstance(name, str) or not name.strip():
            raise DataError(p, i, "profession", "expected a non-empty string")
        if name in seen:
            raise DataError(p, i, "profession", f"duplicate profession {name!r}")
        seen.add(name)
        out.append(Profession(name, _number(p, i, f, "factual_score", -1, 1),
                              _number(p, i, s, "stereotypical_score", -1, 1)))
    return BiasData(out, "dama_professions", [p])


def load_dama_test(limit: int | None = None, path: PathLike = None) -> BiasData:
    """DAMA's test prompts (strings such as ``"The nurse said that"``), first ``limit``."""
    _check_limit(limit)
    p = require(DAMA_TEST, path)
    rows = _json_list(p)
    for i, rec in enumerate(rows):
        if isinstance(rec, dict):  # DAMA's evaluator also accepts {"prompt": ...} records
            rows[i] = rec = _text(p, i, rec, "prompt")
        if not isinstance(rec, str) or not rec.strip():
            raise DataError(p, i, "prompt", "expected a non-empty string")
    return BiasData(_cap(rows, limit), "dama_test", [p], limit)


def load_dama_train(limit: int | None = None, path: PathLike = None) -> BiasData:
    """DAMA's training prompts as :class:`DamaTrainItem`, first ``limit``."""
    _check_limit(limit)
    p = require(DAMA_TRAIN, path)
    out = []
    for i, rec in enumerate(_cap(_json_list(p), limit)):
        prompt = _text(p, i, rec, "prompt")
        subject = _text(p, i, rec, "subject")
        if subject not in prompt:
            raise DataError(p, i, "subject", f"{subject!r} does not occur in the prompt")
        target = _text(p, i, field(p, i, rec, "target_new", dict), "str")
        out.append(DamaTrainItem(prompt, subject, target, _number(p, i, field(p, i, rec, "gender_score", None),
                                                                  "gender_score")))
    return BiasData(out, "dama_train", [p], limit)


def profession_table(professions: Mapping[str, Profession] | Iterable[Profession]) -> dict[str, Profession]:
    """``{lower-cased name: Profession}`` from a list of professions or a mapping."""
    values = professions.values() if isinstance(professions, Mapping) else professions
    return {pr.name.lower(): pr for pr in values}


def match_profession(prompt: str, table: Mapping[str, Profession]) -> Profession | None:
    """The profession a DAMA prompt is about: after the first word (the article), the *longest*
    run of words that, joined by ``_``, names a profession in ``table`` (keys lower-case, see
    :func:`profession_table`). DAMA's reference evaluator takes the shortest match instead, which
    maps the 11 "The singer songwriter ..." prompts to "singer"; the longest match is the intended
    profession."""
    words = prompt.split()
    for end in range(len(words), 1, -1):
        hit = table.get("_".join(words[1:end]).lower())
        if hit is not None:
            return hit
    return None


# ---------------------------------------------------------------------------------------------
# WinoBias
# ---------------------------------------------------------------------------------------------

PRONOUN_GENDER = {"he": "male", "him": "male", "his": "male", "himself": "male",
                  "she": "female", "her": "female", "hers": "female", "herself": "female"}
WINOBIAS_SPLITS = ("dev", "test")
WINOBIAS_TYPES = (1, 2)
WINOBIAS_STEREOTYPES = ("pro", "anti")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)


@dataclass
class WinoBiasItem:
    """One WinoBias sentence. ``profession`` is the gold antecedent without its article,
    ``other`` the other occupation mentioned, ``pronoun`` the first bracketed pronoun as written
    (lower-case in the data), ``sentence`` the text with every bracket removed."""

    id: str  # "<file name>:<index from the file>"
    sentence: str
    profession: str
    other: str
    pronoun: str
    pronoun_gender: str  # "male" | "female"
    stereotype: str  # "pro" | "anti"
    type: int  # 1 | 2
    split: str  # "dev" | "test"
    profession_gender: str | None = None  # the gold occupation's list (male/female_occupations.txt)


def winobias_file(stereotype: str, wb_type: int, split: str) -> str:
    return f"{stereotype}_stereotyped_type{wb_type}.txt.{split}"


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(path, problem="missing")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(path, problem=f"not UTF-8 text ({e.reason})") from None


def load_winobias_occupations(path: PathLike = None) -> dict[str, list[str]]:
    """``{"male": [...], "female": [...]}`` from ``{male,female}_occupations.txt`` in ``path``
    (the WinoBias folder)."""
    folder = require(WINOBIAS_DIR, path)
    out = {}
    for g in ("male", "female"):
        f = Path(folder) / f"{g}_occupations.txt"
        out[g] = [ln.strip() for ln in _read_lines(f) if ln.strip()]
        if not out[g]:
            raise DataError(f, problem="empty: expected one occupation per line")
    return out


def _occupation_mentions(sentence: str, occupations: Sequence[str]) -> list[str]:
    """Occupations named in ``sentence`` (whole words, optional plural s, case-insensitive), in
    order of first mention; longer names first so "construction worker" is one mention."""
    hits = []
    for occ in sorted(occupations, key=len, reverse=True):
        m = re.search(r"(?<![\w-])" + re.escape(occ) + r"s?(?![\w-])", sentence, re.IGNORECASE)
        if m and not any(m.start() < e and s < m.end() for s, e, _ in hits):
            hits.append((m.start(), m.end(), occ))
    return [occ for _, _, occ in sorted(hits)]


def parse_winobias_line(path: Path, index: int, line: str, occupations: Mapping[str, Sequence[str]],
                        stereotype: str, wb_type: int, split: str) -> WinoBiasItem:
    """Parse ``<index> <sentence>``: the first bracket is the gold antecedent (article stripped),
    the second the pronoun; later brackets must be pronouns of the same gender. The other
    occupation is the first one from the occupation lists mentioned in the sentence that is not
    the gold one (two dev templates mention a third occupation later, e.g. "reported her to the
    manager")."""
    num, _, rest = line.strip().partition(" ")
    if not num.isdigit():
        raise DataError(path, index, "index", f"expected '<index> <sentence>', got {line.strip()[:40]!r}")
    brackets = _BRACKET.findall(rest)
    if rest.count("[") != len(brackets) or rest.count("]") != len(brackets):
        raise DataError(path, index, "brackets", "unbalanced [ ]")
    if len(brackets) < 2:
        raise DataError(path, index, "pronoun", f"expected a bracketed antecedent and pronoun, found {len(brackets)} bracket(s)")
    profession = _ARTICLE.sub("", brackets[0].strip())
    if not profession or profession.lower() in PRONOUN_GENDER:
        raise DataError(path, index, "antecedent", f"expected an occupation in the first brackets, got {brackets[0]!r}")
    pronoun = brackets[1].strip()
    gender = PRONOUN_GENDER.get(pronoun.lower())
    if gender is None:
        raise DataError(path, index, "pronoun", f"{pronoun!r} is not a gendered pronoun")
    for extra in brackets[2:]:
        if PRONOUN_GENDER.get(extra.strip().lower()) != gender:
            raise DataError(path, index, "pronoun", f"later bracket {extra!r} is not a {gender} pronoun")
    sentence = _BRACKET.sub(r"\1", rest).strip()
    all_occ = list(occupations.get("male", ())) + list(occupations.get("female", ()))
    others = [o for o in _occupation_mentions(sentence, all_occ) if o.lower() != profession.lower()]
    if not others:
        raise DataError(path, index, "other occupation", "no second occupation from the occupation lists in the sentence")
    prof_gender = next((g for g, occ in occupations.items() if profession.lower() in {o.lower() for o in occ}), None)
    return WinoBiasItem(f"{path.name}:{num}", sentence, profession, others[0], pronoun, gender, stereotype, wb_type,
                        split, prof_gender)


def load_winobias(split: str = "test", types: Sequence[int] = WINOBIAS_TYPES,
                  stereotypes: Sequence[str] = WINOBIAS_STEREOTYPES, limit: int | None = None,
                  path: PathLike = None) -> BiasData:
    """WinoBias sentences of one split, for the given types and pro/anti files, as
    :class:`WinoBiasItem`. ``limit`` keeps the first ``limit`` lines *of each file*, so pro/anti
    counterparts (line-aligned files) stay paired. ``path``: the WinoBias folder."""
    _check_limit(limit)
    if split not in WINOBIAS_SPLITS:
        raise TrusteditError(f"WinoBias split must be one of {WINOBIAS_SPLITS}, got {split!r}")
    if not set(types) <= set(WINOBIAS_TYPES) or not set(stereotypes) <= set(WINOBIAS_STEREOTYPES):
        raise TrusteditError(f"WinoBias types must be in {WINOBIAS_TYPES} and stereotypes in {WINOBIAS_STEREOTYPES}")
    folder = Path(require(WINOBIAS_DIR, path))
    occupations = load_winobias_occupations(folder)
    files = [folder / f"{g}_occupations.txt" for g in ("male", "female")]
    items = []
    for st in stereotypes:
        for t in types:
            f = folder / winobias_file(st, t, split)
            lines = [(i, ln) for i, ln in enumerate(_read_lines(f)) if ln.strip()]
            items += [parse_winobias_line(f, i, ln, occupations, st, t, split) for i, ln in _cap(lines, limit)]
            files.append(f)
    return BiasData(items, f"winobias_{split}", files, limit)


# ---------------------------------------------------------------------------------------------
# StereoSet
# ---------------------------------------------------------------------------------------------

STEREOSET_KINDS = ("intrasentence", "intersentence")
STEREOSET_DOMAINS = ("gender", "profession", "race", "religion")
STEREOSET_LABELS = ("stereotype", "anti-stereotype", "unrelated")


@dataclass
class StereoSetItem:
    """One StereoSet example: ``context`` and its three candidate sentences (already resolved:
    intrasentence candidates are full sentences, intersentence candidates follow the context)."""

    id: str  # "<kind>/<line index>"
    kind: str  # "intrasentence" | "intersentence"
    target: str
    bias_type: str  # the domain
    context: str
    stereotype: str
    anti_stereotype: str
    unrelated: str

    @property
    def sentences(self) -> list[tuple[str, str]]:
        """``[(gold label, sentence)]`` for the three candidates."""
        return list(zip(STEREOSET_LABELS, (self.stereotype, self.anti_stereotype, self.unrelated)))


def load_stereoset(kinds: Sequence[str] = STEREOSET_KINDS, limit: int | None = None, path: PathLike = None) -> BiasData:
    """StereoSet dev examples of the given kinds (file order), first ``limit`` after filtering."""
    _check_limit(limit)
    if not kinds or not set(kinds) <= set(STEREOSET_KINDS):
        raise TrusteditError(f"StereoSet kinds must be a non-empty subset of {STEREOSET_KINDS}, got {kinds!r}")
    p = require(STEREOSET_FILE, path)
    out = []
    for i, rec in enumerate(read_jsonl(p)):
        kind = field(p, i, rec, "type", str)
        if kind not in STEREOSET_KINDS:
            raise DataError(p, i, "type", f"expected one of {STEREOSET_KINDS}, got {kind!r}")
        vals = [_text(p, i, rec, k) for k in ("target", "bias_type", "context", *STEREOSET_LABELS)]
        if kind in kinds:
            out.append(StereoSetItem(f"{kind}/{i}", kind, *vals))
    return BiasData(_cap(out, limit), "stereoset_dev", [p], limit)


# ---------------------------------------------------------------------------------------------
# CrowS-Pairs
# ---------------------------------------------------------------------------------------------

CROWS_DIRECTIONS = ("stereo", "antistereo")
CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


@dataclass
class CrowsPair:
    """One CrowS-Pairs pair: ``sent_more`` is the more stereotypical sentence. ``direction``
    "stereo": sent_more states a stereotype about a disadvantaged group; "antistereo": sent_less
    violates one (so sent_more is again the stereotype-consistent sentence)."""

    id: str  # the CSV's unnamed index column
    sent_more: str
    sent_less: str
    direction: str
    bias_type: str


def load_crows_pairs(limit: int | None = None, path: PathLike = None) -> BiasData:
    """CrowS-Pairs pairs (file order), first ``limit``."""
    _check_limit(limit)
    p = require(CROWS_FILE, path)
    try:
        with open(p, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            for col in CROWS_COLUMNS:
                if col not in header:
                    raise DataError(p, None, col, "missing column")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise DataError(p, problem=f"not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        raise DataError(p, problem=f"invalid CSV ({e})") from None
    out = []
    for i, rec in enumerate(_cap(rows, limit)):
        if None in rec:
            raise DataError(p, i, None, f"{len(header) + len(rec[None])} columns, the header has {len(header)}")
        vals = {}
        for col in CROWS_COLUMNS:
            if rec.get(col) is None:
                raise DataError(p, i, col, "missing")
            vals[col] = _text(p, i, rec, col).strip()
        if vals["stereo_antistereo"] not in CROWS_DIRECTIONS:
            raise DataError(p, i, "stereo_antistereo", f"expected one of {CROWS_DIRECTIONS}, got {vals['stereo_antistereo']!r}")
        out.append(CrowsPair(str(rec.get("") or i), vals["sent_more"], vals["sent_less"], vals["stereo_antistereo"],
                             vals["bias_type"]))
    return BiasData(out, "crows_pairs", [p], limit)
