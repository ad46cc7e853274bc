"""Causal tracing (trustedit.locate): a tiny LLaMA with an answer planted in one known MLP layer
is traced back to that layer; the hooks always go away; the SVG is well formed; GPT-2 runs."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from trustedit import locate
from trustedit.methods.requests import EditRequest

PROMPT, SUBJECT, ANSWER = "Who wrote Hamlet", "Hamlet", "Leonardo"
REQ = EditRequest(PROMPT, SUBJECT, "Paris", "r0")


def plant(lm, k: int):
    """Zero every MLP's down-projection; make layer ``k``'s MLP fire on the subject's state (its
    clean input at the last token, where the subject is) and write along the answer's unembedding
    row. The answer's logit then comes from layer ``k``'s MLP at the subject token only."""
    import torch

    from trustedit.hooks import capture

    m, tok = lm.model, lm.tokenizer
    ans = tok.convert_tokens_to_ids(ANSWER)
    name = f"model.layers.{k}.mlp"
    with torch.no_grad():
        for layer in m.model.layers:
            layer.mlp.down_proj.weight.zero_()
        ids = torch.tensor([tok(PROMPT, add_special_tokens=False)["input_ids"]])
        with capture(m, [name], what="input") as st:
            m(input_ids=ids)
        x = st[name][0][0, -1]
        mlp = m.model.layers[k].mlp
        mlp.gate_proj.weight.zero_()
        mlp.up_proj.weight.zero_()
        mlp.gate_proj.weight[0] = x / x.norm()
        mlp.up_proj.weight[0] = x / x.norm()
        u = torch.randn(m.config.hidden_size, generator=torch.Generator().manual_seed(1))
        u = u / u.norm()
        m.lm_head.weight[ans] = 1.5 * u
        mlp.down_proj.weight[:, 0] = 0.02 * u
    return ans


def _hooks_left(model):
    return [n for n, mod in model.named_modules()
            if mod._forward_hooks or mod._forward_pre_hooks]


def test_window_layers_as_rome():
    assert locate.window_layers(0, 10, 12) == [0, 1, 2, 3, 4]
    assert locate.window_layers(6, 10, 12) == list(range(1, 11))
    assert locate.window_layers(11, 10, 12) == [6, 7, 8, 9, 10, 11]
    assert locate.window_layers(3, 1, 6) == [3]
    assert locate.window_layers(3, 3, 6) == [2, 3, 4]


def test_subject_range_from_offsets(plain_tokenizer):
    assert locate.subject_range(plain_tokenizer, "Who painted the Mona Lisa ?", "Mona Lisa") == (3, 4)
    assert locate.subject_range(plain_tokenizer, "Who painted the Mona Lisa ?", "Mona Lisa", bos=True) == (4, 5)
    with pytest.raises(ValueError):
        locate.subject_range(plain_tokenizer, "Who wrote Hamlet", "Paris")


@pytest.mark.parametrize("k", [1, 4])
def test_planted_layer_is_found(llama_factory, k):
    lm = llama_factory(layers=6)
    ans = plant(lm, k)
    res = locate.causal_trace(lm, REQ, kind="mlp", window=1, samples=6)
    s = res["subject_range"][1]
    assert res["tokens"] == ["Who", "wrote", "Hamlet"] and res["subject_range"] == [2, 2]
    assert res["answer"] == ANSWER and res["answer_id"] == ans  # the model's own prediction
    assert res["p_clean"] > 0.9 and res["p_corrupt"] < 0.4
    assert res["best_layer"] == k
    ie = res["indirect_effect"]
    assert ie[k][s] > 0.5
    assert all(abs(ie[i][t]) < 1e-6 for i in range(6) for t in range(3) if (i, t) != (k, s))

    # a window of 3 restores k from each layer whose window holds it
    res3 = locate.causal_trace(lm, REQ, kind="mlp", window=3, samples=6)
    high = [i for i in range(6) if res3["indirect_effect"][i][s] > 0.5]
    assert high == [i for i in range(6) if abs(i - k) <= 1]

    # the residual stream: restoring the subject's state from layer k on brings the answer back
    # (here also before k: the subject is the last token); other positions were never corrupted
    hid = locate.causal_trace(lm, REQ, kind="hidden", samples=6)
    assert hid["window"] == 1
    assert all(hid["scores"][i][s] > res["p_clean"] - 1e-4 for i in range(k, 6))
    assert all(abs(hid["scores"][i][t] - hid["p_corrupt"]) < 1e-6 for i in range(6) for t in range(s))


def test_auto_layer_on_planted_model(llama_factory):
    lm = llama_factory(layers=6)
    plant(lm, 3)
    other = EditRequest("Who wrote the Hamlet", "Hamlet", "Paris", "r1")
    layer, rec = locate.auto_layer(lm, [REQ, other, REQ], kind="mlp", limit=2, window=1, samples=4)
    assert layer == 3 and rec["layer"] == 3 and rec["kind"] == "mlp"
    assert len(rec["per_layer"]) == 6 and [r["id"] for r in rec["requests"]] == ["r0", "r1"]
    assert max(range(6), key=rec["per_layer"].__getitem__) == 3
    assert rec["requests"][0]["peak"]["layer"] == 3 and rec["requests"][0]["peak"]["position"] == 2
    layer, rec = locate.auto_layer(lm, [REQ], kind="mlp", at="subject", window=1, samples=2)
    assert layer == 3 and rec["at"] == "subject"
    with pytest.raises(ValueError):
        locate.auto_layer(lm, [REQ], at="first")


def test_given_answer_and_seeding(llama_factory):
    import torch

    lm = llama_factory(layers=3)
    tok = lm.tokenizer
    rng = torch.random.get_rng_state()
    a = locate.causal_trace(lm, REQ, kind="attn", samples=3, answer="Shakespeare", seed=5)
    assert torch.equal(rng, torch.random.get_rng_state())  # the global RNG is not touched
    assert a["answer_id"] == tok.convert_tokens_to_ids("Shakespeare") and a["answer"] == "Shakespeare"
    with torch.no_grad():
        p = torch.softmax(lm.model(input_ids=torch.tensor([tok(PROMPT)["input_ids"]])).logits[0, -1], -1)
    assert a["p_clean"] == pytest.approx(float(p[a["answer_id"]]), rel=1e-4)
    b = locate.causal_trace(lm, REQ, kind="attn", samples=3, answer="Shakespeare", seed=5)
    c = locate.causal_trace(lm, REQ, kind="attn", samples=3, answer="Shakespeare", seed=6)
    assert a["scores"] == b["scores"] and a["p_corrupt"] == b["p_corrupt"]
    assert c["p_corrupt"] != a["p_corrupt"]
    # chunked rows give the same numbers as one batch per layer
    d = locate.causal_trace(lm, REQ, kind="attn", samples=3, answer="Shakespeare", seed=5, max_rows=2)
    assert sum(d["scores"], []) == pytest.approx(sum(a["scores"], []), abs=1e-6)


def test_default_noise_is_three_embedding_stds(llama_factory):
    lm = llama_factory(layers=2)
    res = locate.causal_trace(lm, REQ, kind="hidden", samples=2)
    std = lm.model.model.embed_tokens.weight.detach().double().std(unbiased=False).item()
    assert res["noise"] == pytest.approx(3 * std, rel=1e-6)
    assert locate.causal_trace(lm, REQ, samples=2, noise=0.7)["noise"] == 0.7
    with pytest.raises(ValueError):
        locate.causal_trace(lm, REQ, kind="resid")


def test_hooks_are_removed(llama_factory):
    import torch

    lm = llama_factory(layers=3)
    ids = torch.tensor([lm.tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        before = lm.model(input_ids=ids).logits
    for kind in locate.KINDS:
        locate.causal_trace(lm, REQ, kind=kind, window=2, samples=2)
    assert _hooks_left(lm.model) == []
    with torch.no_grad():
        assert torch.equal(before, lm.model(input_ids=ids).logits)

    # an error in the middle of a trace also takes the hooks away
    calls = []

    def boom(m, inputs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")

    h = lm.model.model.norm.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            locate.causal_trace(lm, REQ, kind="mlp", samples=2)
    finally:
        h.remove()
    assert _hooks_left(lm.model) == []
    with torch.no_grad():
        assert torch.equal(before, lm.model(input_ids=ids).logits)


def test_gpt2_shapes(gpt2_factory):
    lm = gpt2_factory(layers=3)
    req = EditRequest("Who painted the Mona Lisa", "Mona Lisa", "Leonardo")
    for kind in locate.KINDS:
        res = locate.causal_trace(lm, req, kind=kind, samples=2)
        assert res["tokens"] == ["Who", "painted", "the", "Mona", "Lisa"]
        assert res["subject_range"] == [3, 4]
        assert len(res["scores"]) == 3 and all(len(r) == 5 for r in res["scores"])
        assert len(res["indirect_effect"]) == 3 and 0 <= res["best_layer"] < 3
        assert res["model"] == lm.fingerprint and res["window"] == (1 if kind == "hidden" else 10)
        assert all(0.0 <= p <= 1.0 for r in res["scores"] for p in r)
        # positions before the subject are clean in the corrupted run: restoring them changes nothing
        assert all(abs(r[t] - res["p_corrupt"]) < 1e-6 for r in res["scores"] for t in range(3))
    assert _hooks_left(lm.model) == []
    # best_layer reads the subject's last token, not the prompt's last position
    res = locate.causal_trace(lm, EditRequest("Who painted the Mona Lisa ?", "Mona Lisa", "x"), samples=2)
    assert res["subject_range"] == [3, 4] and len(res["scores"][0]) == 6
    col = [r[4] for r in res["indirect_effect"]]
    assert res["best_layer"] == col.index(max(col))
    pk = res["peak"]
    assert 3 <= pk["position"] <= 4 and pk["effect"] == max(max(r[3:5]) for r in res["indirect_effect"])


def test_svg_is_well_formed(llama_factory, tmp_path):
    lm = llama_factory(layers=4)
    plant(lm, 2)
    results = [locate.causal_trace(lm, REQ, kind=k, window=1, samples=2) for k in locate.KINDS]
    path = tmp_path / "sub" / "trace.svg"
    assert locate.trace_svg(results[1], path) == str(path)
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    texts = ["".join(t.itertext()) for t in root.iter() if t.tag.endswith("text")]
    assert "Who" in texts and "wrote" in texts and "Hamlet*" in texts  # the subject is starred
    assert any("Leonardo" in t and "MLP" in t for t in texts)
    assert sum(1 for e in root.iter() if e.tag.endswith("rect")) >= 4 * 3
    first = path.read_bytes()
    locate.trace_svg(results[1], path)
    assert path.read_bytes() == first  # deterministic
    assert sorted(p.name for p in path.parent.iterdir()) == ["trace.svg"]  # no temp file left

    many = tmp_path / "many.svg"
    locate.trace_many_svg(results, many, title="Who wrote Hamlet")
    texts = ["".join(t.itertext()) for t in ET.parse(many).getroot().iter() if t.tag.endswith("text")]
    assert texts.count("Hamlet*") == 3 and any("Attn" in t for t in texts)

    odd = dict(results[0], tokens=["<s>", "a & b", "\x01\"'"], answer="<&>")
    locate.trace_svg(odd, tmp_path / "odd.svg", title="x < y & z")
    texts = ["".join(t.itertext()) for t in ET.parse(tmp_path / "odd.svg").getroot().iter()]
    assert "<s>" in texts and "x < y & z" in texts
