"""The sanitation suite: --known-only keeps items, pairs and base passes consistent; the base
evaluation cache returns exactly the recomputed passes, ignores damaged entries, and can be off."""

import pytest

from trustedit.data.sanitation import QAItem, SanitationData
from trustedit.suites.base import Items
from trustedit.suites.sanitation import SUITE, SanitationOptions, restrict, subset


def _items():
    items_f = [QAItem("qf%d" % i, "A%d" % i) for i in range(3)]
    items_r = [QAItem("qr%d" % i, "B%d" % i) for i in range(3)]
    data = SanitationData([], [], items_f, items_r, "test", "knowedit")
    it = Items("sanitation", {"data": data, "known": None}, "sha256:x", {}, SanitationOptions(known_only=True))
    it.memo[("pairs", 0)] = {"test_f": ["f0", "f1", "f2"], "test_r": ["r0", "r1", "r2"], "train_f": ["tf"],
                             "train_r": ["tr"], "fmt": "plain", "prompt_format": {}}
    return it


PRE = {"gen_forget": ["A0 yes", "no", "it is A2"], "gen_retain": ["x", "B1!", "y"], "pred_f": [[1], [2], [3]],
       "pred_r": [[4], [5], [6]]}


def test_known_keeps_what_the_base_model_answered():
    it, raw, info = SUITE.after_base(_items(), PRE)
    d = it.data["data"]
    assert [x.question for x in d.test_forget] == ["qf0", "qf2"]
    assert [x.question for x in d.test_retain] == ["qr1"]
    p = it.memo[("pairs", 0)]
    assert p["test_f"] == ["f0", "f2"] and p["test_r"] == ["r1"] and p["train_f"] == ["tf"]
    assert raw["pred_f"] == [[1], [3]] and raw["gen_retain"] == ["B1!"]
    assert (info["test_forget_kept"], info["test_forget_total"], info["test_retain_kept"]) == (2, 3, 1)
    assert it.info["known_only"] == info


def test_restrict_does_not_touch_the_original():
    it = _items()
    restrict(it, [0], [0])
    subset(PRE, [0], [0])
    assert len(it.data["data"].test_forget) == 3 and len(it.memo[("pairs", 0)]["test_f"]) == 3 and len(PRE["pred_f"]) == 3


def test_known_only_off_and_nothing_known():
    from trustedit.errors import TrusteditError

    it = _items()
    it.opts = SanitationOptions(known_only=False)
    assert SUITE.after_base(it, PRE) == (it, PRE, None)
    with pytest.raises(TrusteditError, match="answers none of the forget"):
        SUITE.after_base(_items(), {**PRE, "gen_forget": ["x", "y", "z"]})


# ---- the base-evaluation cache ---------------------------------------------------------------


def _tiny_items(retain=("What colour is the sky?", "blue"), max_new_tokens=3):
    qs = ["What is the capital of France?", "Who wrote Hamlet?"]
    f = [QAItem(q, "X") for q in qs]
    r = [QAItem(*retain)]
    data = SanitationData(f, r, f, r, "test", "knowedit")
    return Items("sanitation", {"data": data, "known": None}, data.fingerprint(), {},
                 SanitationOptions(max_new_tokens=max_new_tokens))


def test_base_eval_cache_hit_equals_recomputation(tmp_path, monkeypatch, llama_factory):
    from trustedit.job import measure
    from trustedit.suites.sanitation import SanitationSuite

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path))
    lm = llama_factory()
    raw1, info1 = measure(SUITE, lm, _tiny_items(), 2, True)
    assert info1["state"] == "miss (stored)"

    calls = []
    monkeypatch.setattr(SanitationSuite, "measure", lambda *a, **k: calls.append(1) or {})
    raw2, info2 = measure(SUITE, lm, _tiny_items(), 2, True)
    assert info2 == {"state": "hit", "key": info1["key"]} and not calls
    assert raw2 == raw1
    monkeypatch.undo()
    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path))
    fresh, _ = measure(SUITE, lm, _tiny_items(), 2, False)
    assert fresh == raw1  # the cached passes are exactly the recomputed ones

    # any changed input is a different key: evaluation options, test items, weights, batch size
    _, info3 = measure(SUITE, lm, _tiny_items(max_new_tokens=4), 2, True)
    _, info4 = measure(SUITE, lm, _tiny_items(retain=("What colour is grass?", "green")), 2, True)
    _, info5 = measure(SUITE, llama_factory(seed=1), _tiny_items(), 2, True)
    _, info6 = measure(SUITE, lm, _tiny_items(), 4, True)
    assert len({info1["key"], info3["key"], info4["key"], info5["key"], info6["key"]}) == 5
    assert info3["state"] == info4["state"] == info5["state"] == info6["state"] == "miss (stored)"


def test_base_eval_cache_ignores_damaged_entries_and_can_be_off(tmp_path, monkeypatch, llama_factory):
    from trustedit.job import measure

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path))
    lm = llama_factory()
    raw1, info = measure(SUITE, lm, _tiny_items(max_new_tokens=2), 2, True)
    entry = tmp_path / "evals" / f"{info['key']}.json"
    entry.write_text("{not json")
    raw2, info2 = measure(SUITE, lm, _tiny_items(max_new_tokens=2), 2, True)
    assert info2["state"] == "miss (stored)" and raw2 == raw1
    assert [p.name for p in (tmp_path / "evals").iterdir()] == [entry.name]  # rewritten, no temporary left
    _, info3 = measure(SUITE, lm, _tiny_items(max_new_tokens=2), 2, False)
    assert info3 == {"state": "off"}
