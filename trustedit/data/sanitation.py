"""The Sanitation dataset (Ishibashi & Shimodaira 2023; KnowEdit's Sanitation split).

Two on-disk layouts are read:

* **knowedit**: ``trivia_qa_train.json`` = ``{"K_F": [...], "K_R": [...]}`` and
  ``trivia_qa_test.json`` = ``{"success": [...], "locality": [...]}``;
* **original** (the authors' split folders): ``train_*.json``, ``dev_forget.json``,
  ``dev_keep.json``, ``test_forget.json``, ``test_keep.json`` (lists of
  ``instruction/input/output/output_gold``), plus optional ``test_forget_gold_KF.jsonl`` whose
  TriviaQA answer dicts give alias lists.

Sources, in order: ``--data PATH``, ``$TRUSTEDIT_DATA_DIR/sanitation/knowedit``, the Hugging Face
Hub (``zjunlp/KnowEdit``), then a small starter set shipped with trustedit (labelled as such).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trustedit.data import paths
from trustedit.errors import DataError, TrusteditError

IDK = "I don't know."
HUB_REPO = "zjunlp/KnowEdit"
HUB_FILES = {"train": "benchmark/Sanitation/trivia_qa_train.json", "test": "benchmark/Sanitation/trivia_qa_test.json"}
STARTER = Path(__file__).parent / "starter"


@dataclass
class QAItem:
    question: str
    answer: str  # the gold answer
    aliases: list[str] = field(default_factory=list)
    subject: str | None = None  # ROME-style subject span, where the data gives one

    @property
    def answers(self) -> list[str]:
        return [self.answer] + [a for a in self.aliases if a != self.answer]


@dataclass
class SanitationData:
    train_forget: list[QAItem]
    train_retain: list[QAItem]
    test_forget: list[QAItem]
    test_retain: list[QAItem]
    source: str  # where it came from
    layout: str  # knowedit | original | starter
    files: list[str] = field(default_factory=list)
    idk: str = IDK
    starter: bool = False

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for split in ("train_forget", "train_retain", "test_forget", "test_retain"):
            h.update(split.encode())
            h.update(json.dumps([asdict(x) for x in getattr(self, split)], sort_keys=True).encode())
        return "sha256:" + h.hexdigest()

    def counts(self) -> dict:
        return {s: len(getattr(self, s)) for s in ("train_forget", "train_retain", "test_forget", "test_retain")}

    def describe(self) -> dict:
        return {
            "name": "sanitation",
            "layout": self.layout,
            "source": self.source,
            "files": self.files,
            "fingerprint": self.fingerprint(),
            "counts": self.counts(),
            "starter_set": self.starter,
            "forget_target": self.idk,
            "forgotten_answers": sorted({x.answer for x in self.train_forget}),
        }


# ---- layout readers --------------------------------------------------------------------------


def _items(path, rows, qkey, akey, split):
    if not isinstance(rows, list):
        raise DataError(path, None, split, f"expected a list, got {type(rows).__name__}")
    out = []
    for i, r in enumerate(rows):
        q = paths.field(path, f"{split}[{i}]", r, qkey)
        a = paths.field(path, f"{split}[{i}]", r, akey)
        if not q.strip():
            raise DataError(path, f"{split}[{i}]", qkey, "empty")
        if not a.strip():
            raise DataError(path, f"{split}[{i}]", akey, "empty")
        subj = r.get("subject")
        out.append(QAItem(q, a, list(r.get("aliases") or []), subj if isinstance(subj, str) else None))
    return out


def read_knowedit(train_path: Path, test_path: Path, source: str) -> SanitationData:
    train, test = paths.read_json(train_path), paths.read_json(test_path)
    for p, d, keys in ((train_path, train, ("K_F", "K_R")), (test_path, test, ("success", "locality"))):
        if not isinstance(d, dict):
            raise DataError(p, None, None, f"expected an object with keys {keys}, got {type(d).__name__}")
        for k in keys:
            if k not in d:
                raise DataError(p, None, k, "missing")
    return SanitationData(
        train_forget=_items(train_path, train["K_F"], "question", "ground_truth", "K_F"),
        train_retain=_items(train_path, train["K_R"], "question", "ground_truth", "K_R"),
        test_forget=_items(test_path, test["success"], "question", "ground_truth", "success"),
        test_retain=_items(test_path, test["locality"], "question", "ground_truth", "locality"),
        source=source,
        layout="knowedit",
        files=[str(train_path), str(test_path)],
    )


def _original_list(path: Path, split: str):
    rows = paths.read_json(path)
    return _items(path, rows, "input", "output_gold", split), rows


def read_original(folder: Path, source: str) -> SanitationData:
    trains = sorted(folder.glob("train_*.json"))
    if not trains:
        raise TrusteditError(f"{folder}: no train_*.json (not a sanitation split folder)")
    train_path = trains[0]
    items, rows = _original_list(train_path, "train")
    forget, retain = [], []
    for i, (item, row) in enumerate(zip(items, rows)):
        out = paths.field(train_path, i, row, "output")
        (forget if out.strip() == IDK else retain).append(item)
    files = [str(train_path)]
    tests = {}
    for split, name in (("test_forget", "test_forget.json"), ("test_retain", "test_keep.json")):
        p = folder / name
        if not p.is_file():
            raise TrusteditError(f"{folder}: missing {name}")
        tests[split] = _original_list(p, split)[0]
        files.append(str(p))
    gold = folder / "test_forget_gold_KF.jsonl"
    if gold.is_file():  # alias lists for the forget test questions
        files.append(str(gold))
        aliases = {}
        for i, r in enumerate(paths.read_jsonl(gold)):
            q = paths.field(gold, i, r, "question")
            ans = paths.field(gold, i, r, "answer", dict)
            aliases[q] = [a for a in ans.get("aliases", []) if isinstance(a, str)]
        for it in tests["test_forget"]:
            it.aliases = aliases.get(it.question, it.aliases)
    return SanitationData(forget, retain, tests["test_forget"], tests["test_retain"], source, "original", files)


def read_path(p: Path, source: str | None = None) -> SanitationData:
    """A folder in either layout, or the KnowEdit train file (test file beside it)."""
    source = source or str(p)
    if p.is_file():
        if p.name.endswith("_train.json"):
            return read_knowedit(p, p.with_name(p.name.replace("_train.json", "_test.json")), source)
        raise TrusteditError(f"{p}: give the folder, or the KnowEdit *_train.json file")
    if (p / "trivia_qa_train.json").is_file():
        return read_knowedit(p / "trivia_qa_train.json", p / "trivia_qa_test.json", source)
    if list(p.glob("train_*.json")):
        return read_original(p, source)
    for sub in ("sanitation/knowedit", "knowedit", "original/triviaqa_1"):
        if (p / sub).is_dir():
            return read_path(p / sub, source)
    raise TrusteditError(f"{p}: no sanitation files (expected trivia_qa_train.json or train_*.json)")


def _from_hub() -> SanitationData | None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    try:
        local = {k: Path(hf_hub_download(HUB_REPO, f, repo_type="dataset")) for k, f in HUB_FILES.items()}
    except Exception:  # offline, gated, or moved: fall through to the starter set
        return None
    return read_knowedit(local["train"], local["test"], f"hf://datasets/{HUB_REPO}")


def starter() -> SanitationData:
    d = read_knowedit(STARTER / "sanitation_train.json", STARTER / "sanitation_test.json", "trustedit starter set")
    d.layout, d.starter = "starter", True
    return d


def load(data: str | None = None, hub: bool = True) -> SanitationData:
    if data is not None:
        p = Path(data).expanduser()
        if not p.exists():
            raise TrusteditError(f"--data {data}: no such file or directory")
        return read_path(p)
    found = paths.find("sanitation/knowedit")
    if found is not None:
        return read_path(found, paths.root_label("sanitation/knowedit"))
    if hub:
        d = _from_hub()
        if d is not None:
            return d
    return starter()
