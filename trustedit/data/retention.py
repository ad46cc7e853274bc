"""Loaders for the general-capability ("retention") benchmarks, in lm-evaluation-harness formats.

Every multiple-choice task becomes a list of :class:`MCItem`: one context string and the full
continuation strings (target delimiter included, e.g. ``" yes"``), scored by log-likelihood in
:mod:`trustedit.metrics.retention`. Prompt formats follow lm-evaluation-harness 0.4 zero-shot tasks
(``piqa``, ``arc_easy``, ``hellaswag``, ``boolq``, ``commonsense_qa``, ``mmlu`` default
templates). Files are located only through :func:`trustedit.data.paths.find` (an explicit path,
else ``$TRUSTEDIT_DATA_DIR``).

Known deviation: the stored HellaSwag copy keeps only the joined ``activity_label: ctx`` string,
so lm-eval's ``ctx_b.capitalize()`` cannot be applied (the final fragment stays lower-case, as in
llama.cpp's HellaSwag scorer that produced the file). lm-eval's ``preprocess`` is still applied.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Callable

from trustedit.data.paths import field, read_jsonl, require
from trustedit.errors import DataError, TrusteditError

DELIM = " "  # lm-eval's default target_delimiter


@dataclass
class MCItem:
    """One multiple-choice item: ``context`` followed by one of ``choices`` (full continuations)."""

    id: str
    context: str
    choices: list[str]
    label: int
    target_delimiter: str = DELIM  # the prefix of every choice; excluded from acc_norm's length


@dataclass(frozen=True)
class MCTask:
    """Declarative description of one multiple-choice benchmark."""

    name: str
    files: tuple[str, ...]  # relative to $TRUSTEDIT_DATA_DIR; the first is the main file
    citation: str
    lm_eval_task: str
    build: Callable = dc_field(repr=False, compare=False)  # (path, index, record) -> MCItem
    reader: str = "jsonl"  # "jsonl" | "piqa" | "mmlu"
    notes: str = ""


# ---------------------------------------------------------------------------------------------
# per-task builders: (path, index, record) -> MCItem
# ---------------------------------------------------------------------------------------------


def _choices_with_key(path, i, rec):
    ch = field(path, i, rec, "choices", dict)
    texts = field(path, i, ch, "text", list)
    labels = field(path, i, ch, "label", list)
    if len(texts) != len(labels) or len(texts) < 2:
        raise DataError(path, i, "choices", f"need >= 2 texts with one label each, got {len(texts)} texts, {len(labels)} labels")
    if not all(isinstance(t, str) for t in texts):
        raise DataError(path, i, "choices.text", "expected strings")
    key = field(path, i, rec, "answerKey", str).strip()
    if key not in labels:
        raise DataError(path, i, "answerKey", f"{key!r} is not one of the choice labels {labels}")
    return texts, labels.index(key)


def _build_arc(path, i, rec):
    q = field(path, i, rec, "question", str)
    texts, label = _choices_with_key(path, i, rec)
    return MCItem(str(rec.get("id", i)), f"Question: {q}\nAnswer:", [DELIM + t for t in texts], label)


def _build_csqa(path, i, rec):
    q = field(path, i, rec, "question", str)
    texts, label = _choices_with_key(path, i, rec)
    if len(texts) != 5:
        raise DataError(path, i, "choices", f"expected 5 choices, got {len(texts)}")
    letters = "ABCDE"
    ctx = f"Question: {q.strip()}\n" + "".join(f"{letters[k]}. {t}\n" for k, t in enumerate(texts)) + "Answer:"
    return MCItem(str(rec.get("id", i)), ctx, [DELIM + c for c in letters], label)


def _build_boolq(path, i, rec):
    passage = field(path, i, rec, "passage", str)
    question = field(path, i, rec, "question", str)
    answer = field(path, i, rec, "answer", bool)
    return MCItem(str(rec.get("idx", i)), f"{passage}\nQuestion: {question}?\nAnswer:", [DELIM + "no", DELIM + "yes"], int(answer))


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag.utils.preprocess``."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _build_hellaswag(path, i, rec):
    ctx = field(path, i, rec, "ctx", str)
    endings = field(path, i, rec, "endings", list)
    if len(endings) != 4 or not all(isinstance(e, str) for e in endings):
        raise DataError(path, i, "endings", "expected a list of 4 strings")
    label = field(path, i, rec, "label", (int, str))
    try:
        label = int(label)
    except ValueError:
        raise DataError(path, i, "label", f"not an integer: {label!r}") from None
    if isinstance(rec["label"], bool) or not 0 <= label < 4:
        raise DataError(path, i, "label", f"expected 0..3, got {rec['label']!r}")
    return MCItem(str(rec.get("ind", i)), hellaswag_preprocess(ctx), [DELIM + hellaswag_preprocess(e) for e in endings], label)


def _build_piqa(path, i, rec):
    goal = field(path, i, rec, "goal", str)
    sols = [field(path, i, rec, "sol1", str), field(path, i, rec, "sol2", str)]
    label = rec.get("label")
    if label not in (0, 1) or isinstance(label, bool):
        raise DataError(path, i, "label", f"expected 0 or 1 (from valid-labels.lst), got {label!r}")
    return MCItem(str(i), f"Question: {goal}\nAnswer:", [DELIM + s for s in sols], label)


MMLU_LETTERS = "ABCD"


def _build_mmlu(path, i, rec):
    subject, row = rec["subject"], rec["row"]
    if len(row) != 6:
        raise DataError(path, i, "row", f"expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
    question, *opts, ans = row
    ans = ans.strip()
    if ans not in MMLU_LETTERS:
        raise DataError(path, i, "answer", f"expected one of A-D, got {ans!r}")
    desc = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    ctx = desc + question.strip() + "\n" + "".join(f"{MMLU_LETTERS[k]}. {o}\n" for k, o in enumerate(opts)) + "Answer:"
    return MCItem(f"{subject}/{i}", ctx, [DELIM + c for c in MMLU_LETTERS], MMLU_LETTERS.index(ans))


MC_TASKS: dict[str, MCTask] = {
    "piqa": MCTask("piqa", ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
                   "Bisk et al. 2020, PIQA (validation, 1,838)", "piqa", _build_piqa, reader="piqa"),
    "arc_easy": MCTask("arc_easy", ("arc_easy/ARC-Easy-test-first2000.jsonl",),
                       "Clark et al. 2018, ARC-Easy (test, first 2,000 of 2,376)", "arc_easy", _build_arc),
    "hellaswag": MCTask("hellaswag", ("hellaswag/hellaswag_val_first2000.jsonl",),
                        "Zellers et al. 2019, HellaSwag (validation, first 2,000)", "hellaswag", _build_hellaswag,
                        notes="ctx_b not re-capitalised: the source file stores the joined context"),
    "boolq": MCTask("boolq", ("boolq/boolq_validation_first2000.jsonl",),
                    "Clark et al. 2019, BoolQ (validation, first 2,000)", "boolq", _build_boolq),
    "commonsenseqa": MCTask("commonsenseqa", ("commonsenseqa/dev_rand_split.jsonl",),
                            "Talmor et al. 2019, CommonsenseQA (validation, 1,221)", "commonsense_qa", _build_csqa),
    "mmlu": MCTask("mmlu", ("mmlu/test",),
                   "Hendrycks et al. 2021, MMLU (test, 9 subjects, 1,351)", "mmlu (zero-shot, default template)",
                   _build_mmlu, reader="mmlu"),
}


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------


def _read_piqa(path: Path, limit):
    """``path`` is valid.jsonl; labels come from the sibling valid-labels.lst (aligned by line)."""
    labels_path = path.with_name("valid-labels.lst")
    if not labels_path.is_file():
        raise DataError(labels_path, problem="missing (PIQA labels must sit next to valid.jsonl)")
    rows = read_jsonl(path)
    lines = [ln.strip() for ln in labels_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) != len(rows):
        raise DataError(labels_path, problem=f"{len(lines)} labels for {len(rows)} records in {path.name}")
    if limit is not None:
        rows, lines = rows[:limit], lines[:limit]
    out = []
    for i, (rec, lab) in enumerate(zip(rows, lines)):
        if lab not in ("0", "1"):
            raise DataError(labels_path, i, "label", f"expected 0 or 1, got {lab!r}")
        if isinstance(rec, dict):
            rec = {**rec, "label": int(lab)}
        out.append((i, rec))
    return out


def _read_mmlu(path: Path, limit):
    """``path`` is the mmlu/test folder (or one ``<subject>_test.csv``). Round-robin over sorted
    subjects when ``limit`` is given, so that a small limit still covers every subject."""
    files = sorted(path.glob("*_test.csv")) if path.is_dir() else [path]
    if not files:
        raise DataError(path, problem="no *_test.csv files")
    per_subject = []
    for f in files:
        subject = f.name[: -len("_test.csv")] if f.name.endswith("_test.csv") else f.stem
        with open(f, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        per_subject.append((f, subject, rows))
    ordered = []
    if limit is None:
        for f, subject, rows in per_subject:
            ordered += [(f, i, subject, r) for i, r in enumerate(rows)]
    else:
        depth = 0
        while len(ordered) < limit and any(depth < len(r) for _, _, r in per_subject):
            for f, subject, rows in per_subject:
                if depth < len(rows) and len(ordered) < limit:
                    ordered.append((f, depth, subject, rows[depth]))
            depth += 1
    return ordered


def _resolve(task: MCTask, path) -> Path:
    return require(task.files[0], path)


def load_mc(task: str, limit: int | None = None, path: str | os.PathLike | None = None) -> list[MCItem]:
    """Load one multiple-choice task as :class:`MCItem` s (first ``limit`` items in file order;
    MMLU: round-robin over sorted subjects). ``path`` overrides the file (folder for MMLU)."""
    if task not in MC_TASKS:
        raise TrusteditError(f"unknown retention task {task!r}; known: {', '.join(MC_TASKS)}")
    if limit is not None and limit < 0:
        raise TrusteditError(f"limit must be >= 0, got {limit}")
    spec = MC_TASKS[task]
    p = _resolve(spec, path)
    if spec.reader == "mmlu":
        return [spec.build(f, i, {"subject": subject, "row": row}) for f, i, subject, row in _read_mmlu(p, limit)]
    if spec.reader == "piqa":
        return [spec.build(p, i, rec) for i, rec in _read_piqa(p, limit)]
    rows = read_jsonl(p)
    if limit is not None:
        rows = rows[:limit]
    return [spec.build(p, i, rec) for i, rec in enumerate(rows)]


# ---------------------------------------------------------------------------------------------
# WikiText-2
# ---------------------------------------------------------------------------------------------

WIKITEXT_FILE = "wikitext2/wiki.test.raw"
_TOP_HEADING = re.compile(r"^ = [^=](?:.*[^=])? = $")


def split_wikitext_documents(text: str) -> list[str]:
    """Split raw WikiText into articles at top-level ``" = Title = "`` lines (lm-eval's
    ``wikitext_document_level`` style); each document keeps its heading line and its text verbatim."""
    docs, cur = [], []
    for line in text.splitlines(keepends=True):
        if _TOP_HEADING.match(line.rstrip("\n")) and any(ln.strip() for ln in cur):
            docs.append("".join(cur))
            cur = []
        cur.append(line)
    if any(ln.strip() for ln in cur):
        docs.append("".join(cur))
    return [d.strip("\n") for d in docs]


def load_wikitext(limit: int | None = None, path: str | os.PathLike | None = None) -> list[str]:
    """WikiText-2 raw test split as documents (first ``limit`` documents)."""
    p = require(WIKITEXT_FILE, path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(p, problem=f"not UTF-8 text ({e.reason})") from None
    docs = split_wikitext_documents(text)
    if not docs:
        raise DataError(p, problem="no documents (expected ' = Title = ' headings)")
    return docs if limit is None else docs[:limit]
