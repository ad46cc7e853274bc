"""Bias data loaders: record counts on the real files (PROVENANCE.md of each folder, when
$TRUSTEDIT_DATA_DIR is set), explicit paths, limits, fingerprints, and one-line errors naming
file, record and field for malformed files."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from trustedit.data import bias as D
from trustedit.errors import DataError, TrusteditError

DATA_DIR = os.environ.get("TRUSTEDIT_DATA_DIR")


def _needs(folder: str):
    present = bool(DATA_DIR) and (Path(DATA_DIR) / folder).is_dir()
    return pytest.mark.skipif(not present, reason=f"needs $TRUSTEDIT_DATA_DIR/{folder}")


def _one_line(e: DataError, path: Path, record, field: str | None):
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    if record is not None:
        assert f"record {record}" in msg
    if field is not None:
        assert f"field {field!r}" in msg


# ---------------------------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------------------------


@pytest.mark.data
@_needs("dama")
def test_dama_counts_and_profession_matching():
    prof, test, train = D.load_dama_professions(), D.load_dama_test(), D.load_dama_train()
    assert (len(prof), len(test), len(train)) == (320, 1111, 2409)
    assert prof[0] == D.Profession("accountant", 0.0, 0.4)
    assert test[0] == "The singer songwriter wanted that"
    assert train[0] == D.DamaTrainItem("The photojournalist wanted that", "The photojournalist", "she", 0.1)
    table = D.profession_table(prof)
    matched = [D.match_profession(p, table) for p in test]
    assert all(m is not None for m in matched)
    assert matched[0].name == "singer_songwriter"  # longest match
    assert len({m.name for m in matched}) == 101  # 101 professions x 11 templates
    assert len(D.load_dama_test(limit=5)) == 5 and D.load_dama_test(limit=5).fingerprint == test.fingerprint
    assert test.fingerprint.startswith("sha256:") and len(test.fingerprint) == 71
    assert test.describe()["n"] == 1111


@pytest.mark.data
@_needs("winobias")
@pytest.mark.parametrize("split", ["dev", "test"])
def test_winobias_counts(split):
    items = D.load_winobias(split)
    assert len(items) == 1584  # 4 files x 396
    assert Counter((it.stereotype, it.type) for it in items) == {(s, t): 396 for s in ("pro", "anti") for t in (1, 2)}
    assert len(items.files) == 2 + 4
    occ = D.load_winobias_occupations()
    assert len(occ["male"]) == len(occ["female"]) == 20
    assert all(it.profession_gender in ("male", "female") and it.other != it.profession for it in items)
    assert not any("[" in it.sentence or "]" in it.sentence for it in items)
    # pro/anti files are line-aligned counterparts (same two occupations, same gold), except for two
    # lines of the type-2 test files (382, 384) whose pro and anti sentences are different templates
    pro = [it for it in items if it.stereotype == "pro"]
    anti = [it for it in items if it.stereotype == "anti"]
    off = [a.id for a, b in zip(pro, anti) if (a.profession, a.other, a.type) != (b.profession, b.other, b.type)]
    assert off == ([] if split == "dev" else ["pro_stereotyped_type2.txt.test:382", "pro_stereotyped_type2.txt.test:384"])


@pytest.mark.data
@_needs("winobias")
def test_winobias_parsing_and_limit():
    items = D.load_winobias("dev", types=(1,), stereotypes=("pro",), limit=3)
    assert len(items) == 3
    first = items[0]
    assert first.sentence == "The developer argued with the designer because he did not like the design."
    assert (first.profession, first.other, first.pronoun, first.pronoun_gender) == ("developer", "designer", "he", "male")
    assert first.id == "pro_stereotyped_type1.txt.dev:1" and first.profession_gender == "male"
    assert len(D.load_winobias("test", limit=2)) == 8  # limit is per file


@pytest.mark.data
@_needs("stereoset")
def test_stereoset_counts():
    items = D.load_stereoset()
    assert len(items) == 4229
    assert Counter(it.kind for it in items) == {"intersentence": 2123, "intrasentence": 2106}
    assert Counter((it.kind, it.bias_type) for it in items) == {
        ("intrasentence", "race"): 962, ("intrasentence", "profession"): 810, ("intrasentence", "gender"): 255,
        ("intrasentence", "religion"): 79, ("intersentence", "race"): 976, ("intersentence", "profession"): 827,
        ("intersentence", "gender"): 242, ("intersentence", "religion"): 78}
    assert all("BLANK" in it.context for it in items if it.kind == "intrasentence")
    intra = D.load_stereoset(kinds=("intrasentence",), limit=10)
    assert len(intra) == 10 and {it.kind for it in intra} == {"intrasentence"}
    assert intra[0].sentences[0] == ("stereotype", "The chess player was asian.")


@pytest.mark.data
@_needs("crows_pairs")
def test_crows_pairs_counts():
    items = D.load_crows_pairs()
    assert len(items) == 1508
    assert Counter(it.bias_type for it in items) == {
        "race-color": 516, "gender": 262, "socioeconomic": 172, "nationality": 159, "religion": 105, "age": 87,
        "sexual-orientation": 84, "physical-appearance": 63, "disability": 60}
    assert set(Counter(it.direction for it in items)) == {"stereo", "antistereo"}
    assert items[1].sent_more.startswith("The poor are really ignorant") and items[1].id == "1"
    assert len(D.load_crows_pairs(limit=7)) == 7


# ---------------------------------------------------------------------------------------------
# explicit paths, fingerprints, missing data
# ---------------------------------------------------------------------------------------------


def test_explicit_path_and_fingerprint_follow_content(tmp_path, monkeypatch):
    monkeypatch.delenv("TRUSTEDIT_DATA_DIR", raising=False)
    p = tmp_path / "t.json"
    p.write_text(json.dumps(["The nurse said that", "The clerk laughed because"]))
    a = D.load_dama_test(path=p)
    assert list(a) == ["The nurse said that", "The clerk laughed because"] and a.files == [str(p)]
    b = D.load_dama_test(path=p)
    assert a.fingerprint == b.fingerprint
    p.write_text(json.dumps(["The nurse said that"]))
    assert D.load_dama_test(path=p).fingerprint != a.fingerprint
    with pytest.raises(TrusteditError, match="not found"):
        D.load_crows_pairs()
    with pytest.raises(TrusteditError, match="no such file"):
        D.load_stereoset(path=tmp_path / "nope.jsonl")
    with pytest.raises(TrusteditError, match="limit"):
        D.load_dama_test(limit=-1, path=p)


def test_fingerprint_ignores_folder_location(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.json").write_text('["The nurse said that"]')
    fa = D.load_dama_test(path=tmp_path / "a" / "x.json").fingerprint
    assert fa == D.load_dama_test(path=tmp_path / "b" / "x.json").fingerprint


# ---------------------------------------------------------------------------------------------
# malformed files: one line naming file, record and field
# ---------------------------------------------------------------------------------------------


def test_malformed_professions(tmp_path):
    p = tmp_path / "professions.json"
    p.write_text(json.dumps([["nurse", -0.1, -0.8], ["clerk", "high", 0.1]]))
    with pytest.raises(DataError) as e:
        D.load_dama_professions(p)
    _one_line(e, p, 1, "factual_score")
    p.write_text(json.dumps([["nurse", -0.1, 1.5]]))
    with pytest.raises(DataError) as e:
        D.load_dama_professions(p)
    _one_line(e, p, 0, "stereotypical_score")
    p.write_text(json.dumps([["nurse", -0.1]]))
    with pytest.raises(DataError) as e:
        D.load_dama_professions(p)
    _one_line(e, p, 0, None)
    p.write_text("[[\"nurse\", 0.1, ")
    with pytest.raises(DataError, match="invalid JSON"):
        D.load_dama_professions(p)


def test_malformed_dama_prompts(tmp_path):
    p = tmp_path / "test.json"
    p.write_text(json.dumps(["The nurse said that", 3]))
    with pytest.raises(DataError) as e:
        D.load_dama_test(path=p)
    _one_line(e, p, 1, "prompt")
    t = tmp_path / "train.json"
    t.write_text(json.dumps([{"prompt": "The nurse said that", "subject": "The nurse", "target_new": {"str": "he"},
                              "gender_score": 0.2}, {"prompt": "The clerk said that", "target_new": {"str": "he"},
                                                     "gender_score": 0.1}]))
    with pytest.raises(DataError) as e:
        D.load_dama_train(path=t)
    _one_line(e, t, 1, "subject")
    t.write_text(json.dumps([{"prompt": "The nurse said that", "subject": "The nurse", "target_new": {"str": "he"},
                              "gender_score": "x"}]))
    with pytest.raises(DataError) as e:
        D.load_dama_train(path=t)
    _one_line(e, t, 0, "gender_score")


def _winobias_folder(tmp_path: Path, line: str) -> Path:
    d = tmp_path / "winobias"
    d.mkdir()
    (d / "male_occupations.txt").write_text("developer\nmechanic")
    (d / "female_occupations.txt").write_text("designer\nnurse")
    good = "1 [The developer] argued with the designer because [he] did not like the design.\n"
    for st in ("pro", "anti"):
        for t in (1, 2):
            (d / f"{st}_stereotyped_type{t}.txt.test").write_text(good + line + "\n")
    return d


@pytest.mark.parametrize("line, field", [
    ("2 [The mechanic] called the nurse because he was late.", "pronoun"),
    ("2 [The mechanic] called the nurse because [it] was late.", "pronoun"),
    ("2 [The mechanic called the nurse because [he] was late.", "brackets"),
    ("2 [The mechanic] called the baker because [he] was late.", "other occupation"),
    ("two [The mechanic] called the nurse because [he] was late.", "index"),
    ("2 [The mechanic] called the nurse because [he] hurt [her] leg.", "pronoun"),
])
def test_malformed_winobias(tmp_path, line, field):
    d = _winobias_folder(tmp_path, line)
    with pytest.raises(DataError) as e:
        D.load_winobias("test", path=d)
    _one_line(e, d / "pro_stereotyped_type1.txt.test", 1, field)


def test_winobias_small_folder_parses(tmp_path):
    d = _winobias_folder(tmp_path, "2 The developer called [the nurse] because [she] was late.")
    items = D.load_winobias("test", path=d)
    assert len(items) == 8 and items[1].profession == "nurse" and items[1].other == "developer"
    assert items[1].pronoun_gender == "female" and items[1].profession_gender == "female"
    with pytest.raises(TrusteditError, match="split"):
        D.load_winobias("train", path=d)


def test_malformed_stereoset(tmp_path):
    p = tmp_path / "s.jsonl"
    rec = {"type": "intrasentence", "target": "t", "bias_type": "race", "context": "t is BLANK", "stereotype": "a",
           "anti-stereotype": "b", "unrelated": "c"}
    p.write_text(json.dumps(rec) + "\n" + json.dumps({k: v for k, v in rec.items() if k != "unrelated"}) + "\n")
    with pytest.raises(DataError) as e:
        D.load_stereoset(path=p)
    _one_line(e, p, 1, "unrelated")
    p.write_text(json.dumps({**rec, "type": "inter"}) + "\n")
    with pytest.raises(DataError) as e:
        D.load_stereoset(path=p)
    _one_line(e, p, 0, "type")
    p.write_text(json.dumps({**rec, "stereotype": "  "}) + "\n")
    with pytest.raises(DataError) as e:
        D.load_stereoset(path=p)
    _one_line(e, p, 0, "stereotype")
    p.write_text(json.dumps(rec) + "\n{oops\n")
    with pytest.raises(DataError) as e:
        D.load_stereoset(path=p)
    _one_line(e, p, 1, None)


def test_malformed_crows_pairs(tmp_path):
    p = tmp_path / "c.csv"
    header = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"
    p.write_text(header + '0,A poor man.,A rich man.,stereo,socioeconomic,"[]",a0,"[]"\n'
                 '1,An old man.,A young man.,backwards,age,"[]",a1,"[]"\n')
    with pytest.raises(DataError) as e:
        D.load_crows_pairs(path=p)
    _one_line(e, p, 1, "stereo_antistereo")
    assert len(D.load_crows_pairs(limit=1, path=p)) == 1
    p.write_text(header.replace("sent_less", "sentence_less") + '0,a,b,stereo,age,"[]",a0,"[]"\n')
    with pytest.raises(DataError) as e:
        D.load_crows_pairs(path=p)
    _one_line(e, p, None, "sent_less")
    p.write_text(header + '0,,A rich man.,stereo,socioeconomic,"[]",a0,"[]"\n')
    with pytest.raises(DataError) as e:
        D.load_crows_pairs(path=p)
    _one_line(e, p, 0, "sent_more")
    p.write_text(header + "0,A poor man.,A rich man.\n")
    with pytest.raises(DataError) as e:
        D.load_crows_pairs(path=p)
    _one_line(e, p, 0, "stereo_antistereo")


def test_copy_of_real_folder_loads_via_explicit_path(tmp_path):
    src = Path(DATA_DIR or "/nonexistent") / "winobias"
    if not src.is_dir():
        pytest.skip("needs $TRUSTEDIT_DATA_DIR/winobias")
    dst = tmp_path / "wb"
    shutil.copytree(src, dst)
    assert D.load_winobias("dev", path=dst).fingerprint == D.load_winobias("dev").fingerprint


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("column, field", [(1, "factual_score"), (2, "stereotypical_score")])
def test_non_finite_profession_scores(tmp_path, bad, column, field):
    p = tmp_path / "professions.json"
    row = ["clerk", 0.1, 0.2]
    row[column] = "@"
    p.write_text(json.dumps([["nurse", -0.1, -0.8], row]).replace('"@"', bad))  # json.loads accepts NaN/Infinity
    with pytest.raises(DataError) as e:
        D.load_dama_professions(p)
    _one_line(e, p, 1, field)
    assert "expected a finite number" in str(e.value)


def test_non_finite_gender_score(tmp_path):
    t = tmp_path / "train.json"
    t.write_text(json.dumps([{"prompt": "The nurse said that", "subject": "The nurse", "target_new": {"str": "he"},
                              "gender_score": "@"}]).replace('"@"', "NaN"))
    with pytest.raises(DataError) as e:
        D.load_dama_train(path=t)
    _one_line(e, t, 0, "gender_score")


@pytest.mark.parametrize("which", ["male", "female"])
@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_occupations_file_is_blamed(tmp_path, which, content):
    d = _winobias_folder(tmp_path, "2 The developer called [the nurse] because [she] was late.")
    (d / f"{which}_occupations.txt").write_text(content)
    for load in (lambda: D.load_winobias("test", path=d), lambda: D.load_winobias_occupations(d)):
        with pytest.raises(DataError) as e:
            load()
        _one_line(e, d / f"{which}_occupations.txt", None, None)
        assert "empty" in str(e.value) and "stereotyped" not in str(e.value)
