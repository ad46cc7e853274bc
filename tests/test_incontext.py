"""Editing by context (trustedit.incontext): SERAC's and IKE's runtime edit memory."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

IN = "What is the capital of France?"
OUT = ["Who wrote Hamlet?", "What is the highest mountain?", "Which planet is the largest in the Solar System?"]


def _editor(kind="serac", threshold=0.8, demos=()):
    from trustedit.incontext import ContextEditor, Fact, embed

    facts = [Fact(IN, "Berlin", list(demos))]
    return ContextEditor(kind, facts, embed([IN]), threshold=threshold if kind == "serac" else None)


def _ids(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _left(tok, seqs):
    w = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), w), tok.pad_token_id)
    mask = torch.zeros((len(seqs), w), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, w - len(s):] = torch.tensor(s)
        mask[j, w - len(s):] = 1
    return ids, mask


def _counterfactual(lm, editor, prompt_ids, query, extra=()):
    """The logits the counterfactual should give: the model on context + prompt (+ extra), alone."""
    ctx = lm.tokenizer(editor.context_text(editor.facts[0], query), add_special_tokens=False)["input_ids"]
    seq = ctx + list(prompt_ids) + list(extra)
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([seq])).logits[0, len(ctx):]


def test_serac_out_of_scope_rows_are_the_base_models_bit_for_bit(llama_factory):
    from trustedit.patch import Patch

    lm = llama_factory(chat=False)
    tok = lm.tokenizer
    seqs = _ids(tok, [OUT[0], IN, OUT[1], OUT[2]])
    ids, mask = _left(tok, seqs)
    with torch.no_grad():
        base = lm.model(input_ids=ids, attention_mask=mask).logits
    patch = Patch("serac", {}, gate=_editor())
    patch.apply(lm.model)
    try:
        with torch.no_grad():
            edited = lm.model(input_ids=ids, attention_mask=mask).logits
    finally:
        patch.revert(lm.model)
    for r in (0, 2, 3):
        assert torch.equal(edited[r], base[r])  # out of scope: bit-identical, whatever else is in the batch
    assert not torch.equal(edited[1], base[1])
    n = len(seqs[1])
    want = _counterfactual(lm, patch.gate, seqs[1], tok.decode(seqs[1], skip_special_tokens=True))
    assert torch.allclose(edited[1, -n:], want, atol=1e-4)
    assert patch.gate.stats["in_scope"] == 1 and patch.gate.stats["decisions"] == 4


def test_generation_and_teacher_forcing_on_the_cache_follow_the_counterfactual(llama_factory):
    from trustedit.patch import Patch
    from trustedit.prompts import generate

    lm = llama_factory(chat=False)
    tok = lm.tokenizer
    prompts = _ids(tok, [IN, OUT[0], OUT[1]])
    targets = _ids(tok, ["Paris is the capital", "Shakespeare", "Everest"])
    base = generate(lm.model, tok, prompts, 6, 4, share_prefix=False, targets=targets)
    patch = Patch("serac", {}, gate=_editor())
    with _applied(patch, lm.model):
        got = generate(lm.model, tok, prompts, 6, 4, share_prefix=False, targets=targets)
    assert got[1][1:] == base[1][1:] and got[2][1:] == base[2][1:]  # out of scope: same tokens, same predictions
    q = tok.decode(prompts[0], skip_special_tokens=True)
    want = _counterfactual(lm, patch.gate, prompts[0], q, targets[0][:-1])
    n = len(prompts[0])
    assert got[2][0] == want[n - 1:].argmax(-1).tolist()  # teacher forcing = one pass over context + prompt + target
    # greedy decoding = the counterfactual's greedy decoding
    ctx = tok(patch.gate.context_text(patch.gate.facts[0], q), add_special_tokens=False)["input_ids"]
    alone = generate(lm.model, tok, [ctx + prompts[0]], 6, 4, share_prefix=False)
    assert got[1][0] == alone[1][0]


class _applied:
    def __init__(self, patch, model):
        self.patch, self.model = patch, model

    def __enter__(self):
        self.patch.apply(self.model)

    def __exit__(self, *a):
        self.patch.revert(self.model)


def test_ike_reads_every_input_after_the_fact(llama_factory):
    from trustedit.patch import Patch

    lm = llama_factory(chat=False)
    tok = lm.tokenizer
    seqs = _ids(tok, [OUT[0]])
    with torch.no_grad():
        base = lm.model(input_ids=torch.tensor(seqs)).logits
    patch = Patch("ike", {}, gate=_editor("ike"))
    with _applied(patch, lm.model), torch.no_grad():
        edited = lm.model(input_ids=torch.tensor(seqs)).logits
    want = _counterfactual(lm, patch.gate, seqs[0], tok.decode(seqs[0], skip_special_tokens=True))
    assert not torch.equal(edited, base) and torch.allclose(edited[0], want, atol=1e-4)


def test_revert_is_bit_exact_and_save_load_apply_reproduces(llama_factory, tmp_path):
    from trustedit.errors import TrusteditError
    from trustedit.patch import Patch

    lm = llama_factory(chat=False)
    tok = lm.tokenizer
    ids, mask = _left(tok, _ids(tok, [IN, OUT[0]]))
    run = lambda: lm.model(input_ids=ids, attention_mask=mask).logits  # noqa: E731
    with torch.no_grad():
        base = run()
        patch = Patch("serac", {}, gate=_editor(demos=["New Fact: a b\nc d"]))
        patch.apply(lm.model)
        edited = run()
        patch.revert(lm.model)
        assert torch.equal(run(), base) and not lm.model._forward_hooks and not lm.model._forward_pre_hooks
        patch.save(tmp_path / "p")
        loaded = Patch.load(tmp_path / "p")
        assert loaded.gate.describe() == patch.gate.describe()
        loaded.apply(lm.model)
        assert torch.equal(run(), edited)
        loaded.revert(lm.model)
        assert torch.equal(run(), base)
    with pytest.raises(TrusteditError, match="SERAC's edit memory"):
        patch.export_merged(lm.model, tok, tmp_path / "merged")


def test_malformed_saved_memory_is_a_one_line_error(llama_factory, tmp_path):
    import json

    from trustedit.errors import TrusteditError
    from trustedit.patch import Patch

    Patch("ike", {}, gate=_editor("ike")).save(tmp_path / "p")
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    m["gate"]["facts"].append({"prompt": "x", "target": "y"})  # one more fact than key rows
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TrusteditError, match=r"gate.keys has shape \(1, 384\)") as e:
        Patch.load(tmp_path / "p")
    assert "\n" not in str(e.value)
    m["gate"]["kind"] = "nope"
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TrusteditError, match="gate.kind"):
        Patch.load(tmp_path / "p")


def test_ike_demonstrations_never_include_the_test_prompt():
    from trustedit.data.knowedit import EditCase
    from trustedit.incontext import Fact, embed
    from trustedit.methods.ike import retrieve_demos
    from trustedit.incontext import ContextEditor

    test = "What is the capital of France?"
    pool = [
        EditCase("a", test, "France", "Rome", None, ["Which city is France's capital?"], {}, {"N": [("Who wrote Hamlet?", ["Shakespeare"])]}),
        EditCase("b", "The capital of France is", "France", "Lyon", None, [test.upper()], {}, {"N": [("x y", ["z"])]}),
        EditCase("c", "What is the capital of Italy?", "Italy", "Milan", None, ["Italy's capital?"], {},
                 {"N": [(test, ["Paris"])]}),
        EditCase("d", "What is the capital of Spain?", "Spain", "Seville", None, ["Spain's capital city?"], {},
                 {"N": [("Who painted the Mona Lisa?", ["Leonardo"])]}),
        EditCase("e", "Who wrote Hamlet?", "Hamlet", "Marlowe", None, ["Hamlet's author?"], {},
                 {"N": [("What is the highest mountain?", ["Everest"])]}),
    ]
    emb = embed([c.prompt for c in pool])
    demos = retrieve_demos(pool, emb, test, 3, [1, 3, 4], 0)
    assert len(demos) == 2  # a, b and c contain the test prompt (as prompt, paraphrase, locality); d and e remain
    assert all("france" not in d.lower() for d in demos)
    # and at run time: a stored demonstration that contains the input is dropped from its context
    fact = Fact("Who painted the Mona Lisa?", "Picasso", demos)
    ed = ContextEditor("ike", [fact], embed([fact.prompt]))
    ctx = ed.context_text(fact, "Who painted the Mona Lisa?")
    assert "Who painted the Mona Lisa? Leonardo" not in ctx and ctx.endswith("New Fact: Who painted the Mona Lisa? Picasso\n")
    assert ed.context_text(fact, "Something else").count("New Fact:") == 3
    # SERAC's copy demonstration is the edit itself, shown even when the input is the edit's prompt
    own = Fact("Who painted the Mona Lisa?", "Picasso", [], copy=True)
    ctx = ContextEditor("serac", [own], embed([own.prompt]), threshold=0.5).context_text(own, own.prompt)
    assert ctx == "New Fact: Who painted the Mona Lisa? Picasso\nWho painted the Mona Lisa? Picasso\n\n" \
                  "New Fact: Who painted the Mona Lisa? Picasso\n"


def test_editors_that_do_not_locate_the_subject_accept_a_prompt_without_it():
    from trustedit.errors import DataError
    from trustedit.methods.requests import EditRequest, as_requests

    r = EditRequest("By which company, D&RGW 463 has been manufactured?", "Rio Grande 463", "Baldwin", "x")
    assert len(as_requests([r], "serac", subject=False)) == 1
    with pytest.raises(DataError, match="Rio Grande 463"):
        as_requests([r], "rome")


def test_patch_export_command_refuses_an_edit_memory(tmp_path, capsys):
    from trustedit.cli import main
    from trustedit.patch import Patch

    Patch("serac", {}, gate=_editor()).save(tmp_path / "p")
    code = main(["patch", "export", str(tmp_path / "p"), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 2 and "SERAC's edit memory" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "merged").exists()
