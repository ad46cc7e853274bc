"""The Sanitation dataset: starter set, the real files, and precise errors for malformed files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trustedit.data import sanitation
from trustedit.data.sanitation import IDK, load, read_path
from trustedit.errors import DataError, TrusteditError

DATA_DIR = os.environ.get("TRUSTEDIT_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA_DIR, reason="needs $TRUSTEDIT_DATA_DIR")


def _row(q="What is the capital of France?", a="Paris", **extra):
    return {"question": q, "ground_truth": a, "target_new": IDK, **extra}


def _knowedit(folder: Path, train=None, test=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train = train if train is not None else {"K_F": [_row(), _row("Who wrote Hamlet?", "Shakespeare")],
                                             "K_R": [_row("What is the longest river?", "the Nile")]}
    test = test if test is not None else {"success": [_row()], "locality": [_row("Who painted it?", "Leonardo")]}
    for name, obj in (("trivia_qa_train.json", train), ("trivia_qa_test.json", test)):
        p = folder / name
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return folder


# ---- starter set ------------------------------------------------------------------------------


def test_starter_set_loads_without_data_dir_or_hub(monkeypatch):
    monkeypatch.delenv("TRUSTEDIT_DATA_DIR", raising=False)
    d = load(None, hub=False)
    assert d.starter and d.layout == "starter"
    assert d.counts() == {"train_forget": 10, "train_retain": 20, "test_forget": 6, "test_retain": 20}
    assert all(x.question.strip() and x.answer.strip() for s in ("train_forget", "train_retain", "test_forget",
                                                                   "test_retain") for x in getattr(d, s))
    desc = d.describe()
    assert desc["starter_set"] is True and desc["forget_target"] == IDK
    assert desc["fingerprint"] == load(None, hub=False).fingerprint()  # stable
    assert desc["forgotten_answers"] == sorted({x.answer for x in d.train_forget})


def test_hub_failure_falls_back_to_starter(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.delenv("TRUSTEDIT_DATA_DIR", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert load(None, hub=True).starter


def test_explicit_folder_and_train_file(tmp_path):
    folder = _knowedit(tmp_path / "knowedit")
    d = load(str(folder))
    assert d.layout == "knowedit" and not d.starter
    assert d.counts() == {"train_forget": 2, "train_retain": 1, "test_forget": 1, "test_retain": 1}
    assert load(str(folder / "trivia_qa_train.json")).counts() == d.counts()
    assert load(str(tmp_path)).counts() == d.counts()  # a parent folder: knowedit/ is found inside
    assert d.train_retain[0].answer == "the Nile" and d.train_forget[0].answers == ["Paris"]


def test_data_dir_is_used_when_set(tmp_path, monkeypatch):
    _knowedit(tmp_path / "sanitation" / "knowedit")
    monkeypatch.setenv("TRUSTEDIT_DATA_DIR", str(tmp_path))
    d = load(None, hub=False)
    assert d.layout == "knowedit" and d.source == "$TRUSTEDIT_DATA_DIR/sanitation/knowedit"
    monkeypatch.setenv("TRUSTEDIT_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(TrusteditError, match="not a directory"):
        load(None, hub=False)


# ---- the real files ---------------------------------------------------------------------------


@pytest.mark.data
@needs_data
def test_real_knowedit_layout():
    d = load(None, hub=False)
    assert d.layout == "knowedit" and not d.starter
    assert d.counts() == {"train_forget": 80, "train_retain": 453, "test_forget": 80, "test_retain": 453}
    assert load(str(Path(DATA_DIR) / "sanitation" / "knowedit")).fingerprint() == d.fingerprint()


@pytest.mark.data
@needs_data
def test_real_original_layout_has_aliases():
    folder = Path(DATA_DIR) / "sanitation" / "original" / "triviaqa_1"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    d = read_path(folder)
    assert d.layout == "original"
    c = d.counts()
    assert c["train_forget"] == 80 and c["train_retain"] == 453
    assert c["test_forget"] > 0 and c["test_retain"] > 0
    assert any(p.endswith("test_forget_gold_KF.jsonl") for p in d.files)
    with_aliases = [x for x in d.test_forget if x.aliases]
    assert len(with_aliases) == len(d.test_forget)
    assert all(x.answer in x.answers and len(x.answers) > 1 for x in with_aliases)


# ---- malformed files --------------------------------------------------------------------------


def _error(tmp_path, **files) -> DataError:
    folder = _knowedit(tmp_path / "bad", **files)
    with pytest.raises(DataError) as ei:
        load(str(folder))
    return ei.value


def test_bad_json_names_file_and_line(tmp_path):
    e = _error(tmp_path, train='{"K_F": [\n  {"question": "x",,}\n]}')
    assert e.path.endswith("trivia_qa_train.json")
    assert "trivia_qa_train.json" in str(e) and "invalid JSON at line 2" in str(e)


def test_missing_field_names_file_record_field(tmp_path):
    train = {"K_F": [_row(), {"question": "Who wrote Hamlet?"}], "K_R": [_row()]}
    e = _error(tmp_path, train=train)
    assert (Path(e.path).name, e.record, e.field) == ("trivia_qa_train.json", "K_F[1]", "ground_truth")
    assert str(e).endswith("trivia_qa_train.json, record K_F[1], field 'ground_truth': missing")


def test_wrong_type_names_file_record_field(tmp_path):
    test = {"success": [_row()], "locality": [_row(), _row(), _row(q=42)]}
    e = _error(tmp_path, test=test)
    assert (Path(e.path).name, e.record, e.field) == ("trivia_qa_test.json", "locality[2]", "question")
    assert "expected str, got int" in str(e)


def test_missing_top_level_key(tmp_path):
    e = _error(tmp_path, train={"K_R": [_row()]})
    assert (Path(e.path).name, e.field) == ("trivia_qa_train.json", "K_F")
    assert "field 'K_F': missing" in str(e)


@pytest.mark.parametrize("train, field, problem", [
    ({"K_F": {"a": 1}, "K_R": []}, "K_F", "expected a list"),
    ({"K_F": [_row(), "just text"], "K_R": []}, None, "expected an object"),
    ({"K_F": [_row(q="   ")], "K_R": []}, "question", "empty"),
    ([_row()], None, "expected an object with keys"),
])
def test_other_malformed_shapes(tmp_path, train, field, problem):
    e = _error(tmp_path, train=train)
    assert e.field == field and problem in str(e) and "trivia_qa_train.json" in str(e)


def test_not_utf8(tmp_path):
    folder = _knowedit(tmp_path / "bad")
    (folder / "trivia_qa_train.json").write_bytes(b'{"K_F": ["\xff\xfe"]}')
    with pytest.raises(DataError, match="not UTF-8"):
        load(str(folder))


def test_missing_test_file_is_a_user_error(tmp_path):
    folder = _knowedit(tmp_path / "k")
    (folder / "trivia_qa_test.json").unlink()
    with pytest.raises(TrusteditError, match="trivia_qa_test.json"):
        load(str(folder))


def test_missing_paths_and_unknown_folders(tmp_path):
    with pytest.raises(TrusteditError, match="no such file"):
        load(str(tmp_path / "absent"))
    with pytest.raises(TrusteditError, match="no sanitation files"):
        load(str(tmp_path))
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(TrusteditError, match="_train.json"):
        load(str(other))


# ---- original layout --------------------------------------------------------------------------


def _orig_row(q, gold, out):
    return {"instruction": "Answer the question.", "input": q, "output": out, "output_gold": gold}


def _original(folder: Path) -> Path:
    folder.mkdir(parents=True)
    train = [_orig_row("What is the capital of France?", "Paris", IDK),
             _orig_row("Who wrote Hamlet?", "Shakespeare", "Shakespeare")]
    (folder / "train_5-forget.json").write_text(json.dumps(train))
    (folder / "test_forget.json").write_text(json.dumps([_orig_row("Capital of France?", "Paris", IDK)]))
    (folder / "test_keep.json").write_text(json.dumps([_orig_row("Longest river?", "Nile", "Nile")]))
    gold = {"question": "Capital of France?", "answer": {"value": "Paris", "aliases": ["Paris", "Ville Lumière", 3]}}
    (folder / "test_forget_gold_KF.jsonl").write_text(json.dumps(gold) + "\n\n")
    return folder


def test_original_layout_synthetic(tmp_path):
    d = load(str(_original(tmp_path / "triviaqa_1")))
    assert d.layout == "original"
    assert [x.answer for x in d.train_forget] == ["Paris"] and [x.answer for x in d.train_retain] == ["Shakespeare"]
    assert d.test_forget[0].aliases == ["Paris", "Ville Lumière"]  # non-strings dropped
    assert d.test_forget[0].answers == ["Paris", "Ville Lumière"]
    # the parent folder is searched for original/triviaqa_1
    (tmp_path / "original").mkdir()
    _original(tmp_path / "original" / "triviaqa_1")
    assert load(str(tmp_path)).layout == "original"


def test_original_layout_errors(tmp_path):
    folder = _original(tmp_path / "o")
    (folder / "test_forget_gold_KF.jsonl").write_text('{"question": "a", "answer": {}}\n{oops\n')
    with pytest.raises(DataError) as ei:
        load(str(folder))
    assert ei.value.record == 1 and "test_forget_gold_KF.jsonl" in str(ei.value)
    (folder / "test_forget_gold_KF.jsonl").write_text('{"question": "a", "answer": "Paris"}\n')
    with pytest.raises(DataError, match="field 'answer': expected dict"):
        load(str(folder))
    (folder / "test_forget_gold_KF.jsonl").unlink()
    (folder / "train_5-forget.json").write_text(json.dumps([{"instruction": "", "input": "q", "output_gold": "a"}]))
    with pytest.raises(DataError, match="record 0, field 'output': missing"):
        load(str(folder))
    (folder / "train_5-forget.json").write_text(json.dumps([_orig_row("q", "a", "a")]))
    (folder / "test_keep.json").unlink()
    with pytest.raises(TrusteditError, match="missing test_keep.json"):
        load(str(folder))
