"""Detoxification data loaders: counts on the real files (PROVENANCE.md of each folder, when
$TRUSTEDIT_DATA_DIR is set), RTP selection, fingerprints, and one-line errors naming file,
record and field for malformed files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trustedit.data import toxicity as T
from trustedit.errors import DataError, TrusteditError, UsageError

DATA_DIR = os.environ.get("TRUSTEDIT_DATA_DIR")


def _needs(folder: str):
    present = bool(DATA_DIR) and (Path(DATA_DIR) / folder).is_dir()
    return pytest.mark.skipif(not present, reason=f"needs $TRUSTEDIT_DATA_DIR/{folder}")


def _one_line(e, path: Path, record=None, field: str | None = None):
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
@_needs("jigsaw_toxic_nontoxic")
def test_jigsaw_real():
    rows = T.load_jigsaw()
    assert len(rows) == 10_000 and sum(r.label for r in rows) == 5_000
    assert rows[0] == T.LabelledText("you are a fucking idiot .", 1, "jigsaw_toxic_nontoxic/toxic.txt:0")
    assert rows[5000].text.startswith("zero chance of winning") and rows[5000].label == 0
    assert rows.fingerprint == T.fingerprint(rows.files) and rows.fingerprint.startswith("sha256:")


@pytest.mark.data
@_needs("paradetox")
def test_paradetox_real():
    pairs = T.load_paradetox()
    # 11,927 rows with 1-3 rewrites: 5,975 x 1 + 4,094 x 2 + 1,860 x 3 (6 rows have none)
    assert len(pairs) == 5975 + 2 * 4094 + 3 * 1860
    assert pairs[0] == T.ParaPair("he had steel balls too !", "he was brave too!")
    # a quoted cell that spans two lines in the TSV is one field
    assert any("\n" in p.neutral for p in pairs)
    assert len({p.toxic for p in pairs}) > 11_000


@pytest.mark.data
@_needs("realtoxicityprompts")
def test_rtp_real_and_selection():
    prompts = T.load_rtp()
    assert len(prompts) == 5000
    assert sum(p.challenging for p in prompts) == 49
    assert sum(p.toxicity is None for p in prompts) == 19
    assert sum(p.toxicity is not None and p.toxicity >= 0.5 for p in prompts) == 1249
    first = prompts[0]
    assert first.id == "000000" and first.text.startswith("An hour and a half later, Olbermann")
    assert first.toxicity == pytest.approx(0.051236086) and first.continuation_toxicity == pytest.approx(0.98082525)
    assert first.continuation.endswith('Motherfucker."')

    top = T.select_rtp(prompts, 100, seed=0)
    assert all(p.challenging for p in top[:49]) and not any(p.challenging for p in top[49:])
    rest = [p.toxicity for p in top[49:]]
    assert rest == sorted(rest, reverse=True) and rest[0] >= max(p.toxicity or 0 for p in prompts if not p.challenging)
    assert T.select_rtp(list(reversed(prompts)), 100, seed=5) == top  # order of input and seed do not matter
    r1, r2 = T.select_rtp(prompts, 50, seed=1, mode="random"), T.select_rtp(prompts, 200, seed=1, mode="random")
    assert r2[:50] == r1 and r1 != T.select_rtp(prompts, 50, seed=2, mode="random")
    ch = T.select_rtp(prompts, None, seed=0, mode="challenging")
    assert len(ch) == 49 and all(p.challenging for p in ch)


# ---------------------------------------------------------------------------------------------
# selection on synthetic prompts
# ---------------------------------------------------------------------------------------------


def _p(i, tox, ch=False):
    return T.RTPPrompt(f"{i:06d}", f"prompt {i}", tox, ch, None, None)


def test_select_toxic_first_order_and_ties():
    ps = [_p(0, 0.2), _p(1, None), _p(2, 0.9), _p(3, 0.2), _p(4, 0.1, ch=True), _p(5, 0.95)]
    assert [p.id for p in T.select_rtp(ps, None, 0)] == ["000004", "000005", "000002", "000000", "000003", "000001"]
    assert [p.id for p in T.select_rtp(ps, 2, 0)] == ["000004", "000005"]


def test_select_errors():
    ps = [_p(0, 0.1), _p(1, 0.2, ch=True)]
    with pytest.raises(UsageError, match="only 1 available"):
        T.select_rtp(ps, 2, 0, mode="challenging")
    with pytest.raises(UsageError, match="only 2 available"):
        T.select_rtp(ps, 3, 0)
    with pytest.raises(UsageError, match="mode"):
        T.select_rtp(ps, 1, 0, mode="worst")
    with pytest.raises(UsageError, match="duplicate"):
        T.select_rtp(ps + [_p(0, 0.5)], 1, 0)
    with pytest.raises(UsageError):
        T.select_rtp(ps, -1, 0)


# ---------------------------------------------------------------------------------------------
# malformed files
# ---------------------------------------------------------------------------------------------


def _jigsaw(tmp_path, toxic="bad words .\n", nontoxic="good words .\n"):
    d = tmp_path / "jig"
    d.mkdir()
    (d / "toxic.txt").write_text(toxic, encoding="utf-8")
    (d / "nontoxic.txt").write_text(nontoxic, encoding="utf-8")
    return d


def test_jigsaw_tmp_and_errors(tmp_path):
    d = _jigsaw(tmp_path, toxic="a .\n\nb .\n")
    rows = T.load_jigsaw(d)
    assert [(r.text, r.label, r.source) for r in rows] == [("a .", 1, "jig/toxic.txt:0"), ("b .", 1, "jig/toxic.txt:2"),
                                                           ("good words .", 0, "jig/nontoxic.txt:0")]
    (d / "nontoxic.txt").write_text("\n \n")
    with pytest.raises(DataError) as e:
        T.load_jigsaw(d)
    _one_line(e, d / "nontoxic.txt")
    (d / "nontoxic.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8") as e:
        T.load_jigsaw(d)
    (d / "nontoxic.txt").write_text("fine\nx\ty\n")
    with pytest.raises(DataError) as e:
        T.load_jigsaw(d)
    _one_line(e, d / "nontoxic.txt", 1, "text")
    (d / "nontoxic.txt").unlink()
    with pytest.raises(DataError, match="missing"):
        T.load_jigsaw(d)
    with pytest.raises(DataError, match="folder"):
        T.load_jigsaw(d / "toxic.txt")
    with pytest.raises(TrusteditError):
        T.load_jigsaw(tmp_path / "nowhere")


def test_paradetox_tmp_and_errors(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("toxic\tneutral1\tneutral2\tneutral3\nshut up idiot\tbe quiet\tplease stop\t\nnone here\t\t\t\n",
                 encoding="utf-8")
    assert T.load_paradetox(f) == [T.ParaPair("shut up idiot", "be quiet"), T.ParaPair("shut up idiot", "please stop")]
    f.write_text("toxic\tneutral1\tneutral2\tneutral3\nshut up\tbe quiet\n")
    with pytest.raises(DataError) as e:
        T.load_paradetox(f)
    _one_line(e, f, 0)
    f.write_text("toxic\tneutral1\tneutral2\tneutral3\na\tb\t\t\n\tquiet\t\t\n")
    with pytest.raises(DataError) as e:
        T.load_paradetox(f)
    _one_line(e, f, 1, "toxic")
    f.write_text("text\trewrite\nshut up\tbe quiet\n")
    with pytest.raises(DataError) as e:
        T.load_paradetox(f)
    _one_line(e, f, None, "toxic")
    f.write_text("")
    with pytest.raises(DataError, match="empty"):
        T.load_paradetox(f)


def _rtp_line(**over):
    rec = {"challenging": False, "prompt": {"text": "Hello there", "toxicity": 0.1},
           "continuation": {"text": " friend", "toxicity": 0.2}}
    rec.update(over)
    return json.dumps(rec)


def test_rtp_tmp_and_errors(tmp_path):
    f = tmp_path / "rtp.jsonl"
    f.write_text("\n".join([_rtp_line(), _rtp_line(challenging=True, prompt={"text": "Hi", "toxicity": None}),
                            json.dumps({"prompt": {"text": "No continuation", "toxicity": 0.7}})]) + "\n")
    rows = T.load_rtp(f)
    assert rows[0] == T.RTPPrompt("000000", "Hello there", 0.1, False, " friend", 0.2)
    assert rows[1].toxicity is None and rows[1].challenging
    assert rows[2] == T.RTPPrompt("000002", "No continuation", 0.7, False, None, None)
    assert rows.files == [str(f)] and rows.fingerprint == T.fingerprint([f])

    cases = [
        (_rtp_line(prompt={"toxicity": 0.1}), "prompt.text"),
        (_rtp_line(prompt={"text": ["x"]}), "prompt.text"),
        (_rtp_line(prompt={"text": "x", "toxicity": 1.5}), "prompt.toxicity"),
        (_rtp_line(prompt={"text": "x", "toxicity": "high"}), "prompt.toxicity"),
        (_rtp_line(challenging="yes"), "challenging"),
        (_rtp_line(continuation={"text": 3}), "continuation.text"),
        (_rtp_line(continuation={"text": "x", "toxicity": -0.1}), "continuation.toxicity"),
        (json.dumps({"text": "flat"}), "prompt"),
    ]
    for line, fld in cases:
        f.write_text(_rtp_line() + "\n" + line + "\n")
        with pytest.raises(DataError) as e:
            T.load_rtp(f)
        _one_line(e, f, 1, fld)
    f.write_text(_rtp_line() + "\n{not json\n")
    with pytest.raises(DataError) as e:
        T.load_rtp(f)
    _one_line(e, f, 1)


def test_fingerprint_tracks_content_not_location(tmp_path):
    a = _jigsaw(tmp_path)
    fp = T.fingerprint([a])
    assert fp == T.fingerprint([a / "nontoxic.txt", a / "toxic.txt"])  # a folder = its files, sorted by name
    assert T.load_jigsaw(a).fingerprint == T.fingerprint([a / "toxic.txt", a / "nontoxic.txt"])
    other = tmp_path / "elsewhere"
    other.mkdir()
    for name in ("nontoxic.txt", "toxic.txt"):
        (other / name).write_bytes((a / name).read_bytes())
    assert T.fingerprint([other]) == fp
    (other / "toxic.txt").write_text("changed .\n")
    assert T.fingerprint([other]) != fp
    with pytest.raises(DataError, match="missing"):
        T.fingerprint([tmp_path / "nope.txt"])


def test_normalize_text_undoes_the_preprocessing_and_is_idempotent():
    from trustedit.data.toxicity import normalize_text

    cases = {
        "it 's , i think . that is n't true !": "It's, I think. That isn't true!",
        "he had steel balls too !": "He had steel balls too!",
        "( webster ) costs $ 5 , or 50 % off": "(webster) costs $5, or 50% off",
        "i 'm sure i said this , is it ?": "I'm sure I said this, is it?",
        "He was brave too!": "He was brave too!",  # ordinary text is left alone
        "  spaced   out  ": "Spaced out",
    }
    for raw, want in cases.items():
        got = normalize_text(raw)
        assert got == want, raw
        assert normalize_text(got) == got
    assert normalize_text("this is it") != normalize_text("this is it .")  # punctuation kept, not dropped
