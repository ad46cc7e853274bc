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
