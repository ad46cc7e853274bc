"""Episode.restrict (--known-only) keeps pairs, base passes and fluency prompts consistent."""

from trustedit.data.sanitation import QAItem, SanitationData
from trustedit.erase import Episode


def _episode():
    items_f = [QAItem("qf%d" % i, "A%d" % i) for i in range(3)]
    items_r = [QAItem("qr%d" % i, "B%d" % i) for i in range(3)]
    data = SanitationData([], [], items_f, items_r, "test", "knowedit")
    pre = {"gen_forget": ["A0 yes", "no", "it is A2"], "gen_retain": ["x", "B1!", "y"], "pred_f": [[1], [2], [3]],
           "pred_r": [[4], [5], [6]], "fluency": ["u", "v"]}
    return Episode(data, "plain", ["f0", "f1", "f2"], ["r0", "r1", "r2"], ["tf"], ["tr"], ["p0", "p1"], pre)


def test_known_keeps_what_the_base_model_answered():
    ep, info = _episode().known()
    assert [x.question for x in ep.data.test_forget] == ["qf0", "qf2"]
    assert [x.question for x in ep.data.test_retain] == ["qr1"]
    assert ep.test_f == ["f0", "f2"] and ep.test_r == ["r1"]
    assert ep.pre["pred_f"] == [[1], [3]] and ep.pre["gen_retain"] == ["B1!"]
    assert ep.fluency_prompts == ["p0", "p1"] and ep.pre["fluency"] == ["u", "v"]  # fluency is measured on fixed prompts
    assert (info["test_forget_kept"], info["test_forget_total"], info["test_retain_kept"]) == (2, 3, 1)


def test_restrict_does_not_touch_the_original():
    ep = _episode()
    ep.restrict([0], [0])
    assert len(ep.data.test_forget) == 3 and len(ep.test_f) == 3


# ---- the base-evaluation cache ---------------------------------------------------------------


def _tiny_data():
    qs = ["What is the capital of France?", "Who wrote Hamlet?", "What colour is the sky?"]
    f = [QAItem(q, "X") for q in qs[:2]]
    r = [QAItem(qs[2], "blue")]
    return SanitationData(f, r, f, r, "test", "knowedit")


def test_base_eval_cache_hit_equals_recomputation(tmp_path, monkeypatch, llama_factory):
    from trustedit import erase
    from trustedit.erase import EraseOptions, base_eval

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path))
    lm = llama_factory()
    opts = EraseOptions(retention=[], max_new_tokens=3, fluency_prompts=1, fluency_tokens=4, batch_size=2)
    ep1, _, info1 = base_eval(lm, _tiny_data(), opts)
    assert info1["state"] == "miss (stored)"

    calls = []
    monkeypatch.setattr(erase, "measure", lambda *a, **k: calls.append(1) or {})
    ep2, _, info2 = base_eval(lm, _tiny_data(), opts)
    assert info2 == {"state": "hit", "key": info1["key"]} and not calls
    assert ep2.pre == ep1.pre and ep2.scores(opts)["locality"].values == ep1.scores(opts)["locality"].values

    # any changed input is a different key: evaluation options, test items, weights
    _, _, info3 = base_eval(lm, _tiny_data(), EraseOptions(retention=[], max_new_tokens=4, fluency_prompts=1, fluency_tokens=4, batch_size=2))
    d = _tiny_data()
    d.test_retain = [QAItem("What colour is grass?", "green")]
    _, _, info4 = base_eval(lm, d, opts)
    lm2 = llama_factory(seed=1)
    _, _, info5 = base_eval(lm2, _tiny_data(), opts)
    assert len({info1["key"], info3["key"], info4["key"], info5["key"]}) == 4
    assert info3["state"] == info4["state"] == info5["state"] == "miss (stored)"


def test_base_eval_cache_ignores_damaged_entries_and_can_be_off(tmp_path, monkeypatch, llama_factory):
    from trustedit.erase import EraseOptions, base_eval

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path))
    lm = llama_factory()
    opts = EraseOptions(retention=[], max_new_tokens=2, fluency_prompts=1, fluency_tokens=2, batch_size=2)
    ep1, _, info = base_eval(lm, _tiny_data(), opts)
    entry = tmp_path / "evals" / f"{info['key']}.json"
    entry.write_text("{not json")
    ep2, _, info2 = base_eval(lm, _tiny_data(), opts)
    assert info2["state"] == "miss (stored)" and ep2.pre == ep1.pre
    assert [p.name for p in (tmp_path / "evals").iterdir()] == [entry.name]  # rewritten, no temporary left
    opts.eval_cache = False
    _, _, info3 = base_eval(lm, _tiny_data(), opts)
    assert info3 == {"state": "off"}
