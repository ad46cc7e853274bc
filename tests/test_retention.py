"""Retention metrics (log-likelihood MC, perplexity) and their data loaders."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from trustedit.data import retention as rdata
from trustedit.data.retention import MC_TASKS, MCItem, load_mc, load_wikitext, split_wikitext_documents
from trustedit.errors import DataError, TrusteditError
from trustedit.metrics import retention as rm
from trustedit.metrics.retention import encode_pair, loglikelihood, multiple_choice, perplexity


HAVE_DATA = bool(os.environ.get("TRUSTEDIT_DATA_DIR"))
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="TRUSTEDIT_DATA_DIR not set")


@pytest.fixture
def lm(llama_factory):
    loaded = llama_factory(seed=3, chat=False)
    return loaded.model, loaded.tokenizer


def _manual_ll(model, tok, ctx, cont, add_bos):
    c, t = encode_pair(tok, ctx, cont, add_bos)
    ids = torch.tensor([c + t])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    lps = [logp[len(c) - 1 + k, t[k]].item() for k in range(len(t))]
    greedy = all(logp[len(c) - 1 + k].argmax().item() == t[k] for k in range(len(t)))
    return sum(lps), len(t), greedy


REQS = [
    ("What is the capital of France ?", " Paris"),
    ("What is the capital of France ?", " Rome"),  # same model input as the line above: shared forward
    ("Question : Who wrote Hamlet ?\nAnswer:", " Shakespeare"),
    ("the", " longest river is the Nile and the Amazon"),
    ("Which planet is the largest in the Solar System ? Jupiter is the largest planet", " ."),
    ("I don ' t know ", "yes"),  # trailing space moves to the continuation
    ("", " Rome"),  # empty context -> prefix token
]


@pytest.mark.parametrize("add_bos", [False, True])
def test_loglikelihood_matches_manual_and_is_batch_invariant(lm, add_bos):
    model, tok = lm
    want = [_manual_ll(model, tok, c, x, add_bos) for c, x in REQS]
    for bs in (1, 3, 16):  # different padding per batch size
        got = loglikelihood(model, tok, REQS, batch_size=bs, add_bos=add_bos)
        for (g, n, gr), (w, wn, wgr) in zip(got, want):
            assert n == wn and gr == wgr
            assert g == pytest.approx(w, abs=1e-4)


def test_encode_pair_moves_trailing_space_and_bos_policy(plain_tokenizer):
    tok = plain_tokenizer
    c, t = encode_pair(tok, "the capital ", "Paris", add_bos=False)
    assert c == tok("the capital", add_special_tokens=False)["input_ids"]
    assert t == tok(" Paris", add_special_tokens=False)["input_ids"]
    c2, _ = encode_pair(tok, "the capital", " Paris", add_bos=True)
    assert c2[0] == tok.bos_token_id and c2[1:] == c
    c3, _ = encode_pair(tok, "", " Paris", add_bos=False)
    assert c3 == [tok.bos_token_id]
    tok.add_bos_token = True
    assert rm.resolve_add_bos(tok, None) is True
    assert rm.resolve_add_bos(tok, False) is False


def test_left_truncation_to_model_window(lm):
    model, tok = lm
    ctx = " ".join(["the capital of France"] * 60)  # > 128 positions
    (ll, n, _), = loglikelihood(model, tok, [(ctx, " Paris")], add_bos=False)
    c, t = encode_pair(tok, ctx, " Paris", False)
    ids = torch.tensor([(c + t)[:-1][-128:]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, -1].log_softmax(-1)
    assert n == 1 and ll == pytest.approx(logp[t[0]].item(), abs=1e-4)


class _ScriptedLM(torch.nn.Module):
    """Logits depend only on the current input token: next-token table ``table[token]``."""

    def __init__(self, vocab, table):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.table = table  # [vocab, vocab] logits
        self.config = type("C", (), {"max_position_embeddings": 64})()

    def forward(self, input_ids, attention_mask=None):
        return type("O", (), {"logits": self.table[input_ids] + 0 * self.w})()


def test_is_greedy_on_controlled_model(plain_tokenizer):
    tok = plain_tokenizer
    V = len(tok)
    v = lambda w: tok.convert_tokens_to_ids(w)  # noqa: E731
    table = torch.zeros(V, V)
    table[v("capital"), v("of")] = 10.0
    table[v("of"), v("France")] = 10.0
    table[v("France"), v("Paris")] = 10.0
    model = _ScriptedLM(V, table)
    out = loglikelihood(model, tok, [("the capital", " of France Paris"), ("the capital", " of Italy"),
                                     ("the capital", " France")], add_bos=False)
    assert [o[2] for o in out] == [True, False, False]
    assert [o[1] for o in out] == [3, 2, 1]
    assert out[0][0] > out[1][0]


def test_acc_and_acc_norm_on_known_answers(monkeypatch, plain_tokenizer):
    items = [
        MCItem("a", "ctx", [" x", " yy"], 0),
        MCItem("b", "ctx", [" x", " yyyy"], 1),
        MCItem("c", "ctx", [" aaaa", " b", " cc"], 2),
    ]
    # per request log-likelihoods (in request order)
    lls = [-1.0, -3.0,  # a: acc->0 (right); norm: -1/1 vs -3/2=-1.5 -> 0 (right)
           -1.0, -2.0,  # b: acc->0 (wrong); norm: -1/1 vs -2/4=-0.5 -> 1 (right)
           -4.0, -0.5, -1.5]  # c: acc->1 (wrong); norm: -1, -0.5, -0.75 -> 1 (wrong)
    monkeypatch.setattr(rm, "loglikelihood_shared", lambda *a, **k: [(x, 1, False) for x in lls])
    r = multiple_choice(None, plain_tokenizer, items, task="toy", add_bos=False)
    assert r["acc"].values == [1.0, 0.0, 0.0]
    assert r["acc_norm"].values == [1.0, 1.0, 0.0]
    assert r["acc"].name == "toy/acc" and "acc_norm" in r["acc_norm"].protocol
    assert r["acc"].higher_is_better


def test_multiple_choice_end_to_end_runs(lm):
    model, tok = lm
    items = [MCItem(str(i), "What is the capital of France ?", [" Paris", " Berlin", " Rome"], i % 3) for i in range(4)]
    r = multiple_choice(model, tok, items, batch_size=5, task="toy")
    # identical contexts -> identical prediction on every item
    assert len(set(tuple(x) for x in [r["acc"].values])) == 1 and sum(r["acc"].values) in (1.0, 2.0)


def _manual_ppl(model, tok, doc, add_bos):
    ids = tok(doc, add_special_tokens=False)["input_ids"]
    if add_bos:
        ids = [tok.bos_token_id] + ids
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    nll = -sum(logp[i - 1, ids[i]].item() for i in range(1, len(ids)))
    return nll, len(ids) - 1


@pytest.mark.parametrize("add_bos", [False, True])
def test_perplexity_matches_manual(lm, add_bos):
    model, tok = lm
    docs = ["the capital of France is Paris .", "Who wrote Hamlet ? Shakespeare wrote Hamlet , I know ."]
    s = perplexity(model, tok, docs, add_bos=add_bos, batch_size=2)
    man = [_manual_ppl(model, tok, d, add_bos) for d in docs]
    for v, w, (nll, n) in zip(s.values, s.weights, man):
        assert v == pytest.approx(nll, abs=1e-4) and w == n
    assert s.value == pytest.approx(math.exp(sum(m[0] for m in man) / sum(m[1] for m in man)), rel=1e-5)
    assert s.aggregation == "ppl" and s.higher_is_better is False
    assert "stride" in s.protocol and "BOS" in s.protocol


def test_perplexity_windows_cover_every_token_once(lm):
    model, tok = lm
    doc = " ".join(["the capital of France is Paris ."] * 5)  # 35 tokens
    n = len(tok(doc, add_special_tokens=False)["input_ids"])
    full = perplexity(model, tok, [doc], add_bos=False)  # one window
    disjoint = perplexity(model, tok, [doc], max_length=8, add_bos=False)
    strided = perplexity(model, tok, [doc], max_length=8, stride=3, add_bos=False)
    for s in (full, disjoint, strided):  # per-window items whose token counts add up to the document's
        assert sum(s.weights) == n - 1 and len(s.weights) == s.extra["windows"]
    assert full.extra["windows"] == 1 and disjoint.extra["windows"] == math.ceil((n - 1) / 8)
    # windows: every position scored exactly once
    for L, S in ((8, 8), (8, 3), (5, 1), (64, 64)):
        seen = []
        for b, e, new in rm._windows(n, L, S):
            assert e - b <= L
            seen += list(range(e - new + 1, e + 1))
        assert seen == list(range(1, n))
    # manual disjoint-window NLL
    ids = tok(doc, add_special_tokens=False)["input_ids"]
    nll = 0.0
    with torch.no_grad():
        for b in range(0, n - 1, 8):
            w = ids[b : min(b + 8, n - 1) + 1]
            lp = model(input_ids=torch.tensor([w[:-1]])).logits[0].log_softmax(-1)
            nll -= sum(lp[k, w[k + 1]].item() for k in range(len(w) - 1))
    assert sum(disjoint.values) == pytest.approx(nll, abs=1e-3)
    with pytest.raises(TrusteditError):
        perplexity(model, tok, [doc], max_length=8, stride=9)


def test_bf16_model_runs(lm, llama_factory):
    model, tok = lm
    m16 = llama_factory(seed=3, chat=False).model.to(torch.bfloat16)
    a = loglikelihood(m16, tok, REQS[:2], add_bos=False)
    b = loglikelihood(model, tok, REQS[:2], add_bos=False)
    for (x, _, _), (y, _, _) in zip(a, b):
        assert x == pytest.approx(y, abs=0.3)


# ---- loaders -------------------------------------------------------------------------------

EXPECTED = {"piqa": (1838, 2), "arc_easy": (2000, None), "hellaswag": (2000, 4), "boolq": (2000, 2),
            "commonsenseqa": (1221, 5), "mmlu": (1351, 4)}


@needs_data
@pytest.mark.parametrize("task", sorted(MC_TASKS))
def test_loaders_on_real_files(task):
    items = load_mc(task)
    n, k = EXPECTED[task]
    assert len(items) == n
    for it in items:
        assert 0 <= it.label < len(it.choices)
        assert k is None or len(it.choices) == k
        assert all(c.startswith(" ") for c in it.choices)
        assert not it.context.endswith(" ")
    assert [i.id for i in load_mc(task, limit=7)] == ([i.id for i in items[:7]] if task != "mmlu" else
                                                      [i.id for i in load_mc(task, limit=7)])


@needs_data
def test_loader_formats_match_lm_eval():
    piqa = load_mc("piqa", limit=1)[0]
    assert piqa.context.startswith("Question: How do I ready a guinea pig cage") and piqa.context.endswith("\nAnswer:")
    assert piqa.label == 0
    b = load_mc("boolq", limit=1)[0]
    assert b.context.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert b.choices == [" no", " yes"] and b.label == 0
    m = load_mc("mmlu", limit=9)
    assert len({i.id.split("/")[0] for i in m}) == 9  # round-robin covers all 9 subjects
    assert m[0].context.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert m[0].context.endswith("\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:") and m[0].label == 1
    c = load_mc("commonsenseqa", limit=1)[0]
    assert c.context.startswith("Question: A revolving door") and "\nE. new york\nAnswer:" in c.context
    assert c.choices == [" A", " B", " C", " D", " E"]
    h = load_mc("hellaswag", limit=1)[0]
    assert h.context == "Roof shingle removal: A man is sitting on a roof. he" and h.label == 3
    assert rdata.hellaswag_preprocess("A  man [header] sits [title] down") == "A man sits. down"


@needs_data
def test_wikitext_documents():
    docs = load_wikitext()
    assert len(docs) == 62  # lm-eval's wikitext-2 document-level test split
    assert docs[0].startswith(" = Robert Boulter = ")
    assert all(d.startswith(" = ") and not d.startswith(" = = ") for d in docs)
    assert load_wikitext(limit=2) == docs[:2]


def test_wikitext_split_keeps_subsections():
    text = " = A = \n\n x y \n = = Sub = = \n z \n = B = \n w \n"
    assert split_wikitext_documents(text) == [" = A = \n\n x y \n = = Sub = = \n z ", " = B = \n w "]


def test_malformed_records_raise_data_error(tmp_path):
    f = tmp_path / "arc.jsonl"
    good = {"id": "q1", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}
    bad = {"id": "q2", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as e:
        load_mc("arc_easy", path=f)
    assert e.value.path == str(f) and e.value.record == 1 and e.value.field == "answerKey"
    assert "arc.jsonl" in str(e.value) and "record 1" in str(e.value)
    f.write_text(json.dumps({**good, "answerKey": "Z"}) + "\n")
    with pytest.raises(DataError, match="answerKey"):
        load_mc("arc_easy", path=f)
    g = tmp_path / "boolq.jsonl"
    g.write_text(json.dumps({"question": "q", "passage": "p", "answer": "yes"}) + "\n")
    with pytest.raises(DataError) as e:
        load_mc("boolq", path=g)
    assert e.value.record == 0 and e.value.field == "answer"
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps(good) + "\n")
    assert len(load_mc("arc_easy", path=ok)) == 1


def test_missing_data_and_run_retention(lm, monkeypatch, tmp_path):
    model, tok = lm
    monkeypatch.setenv("TRUSTEDIT_DATA_DIR", str(tmp_path))
    with pytest.raises(TrusteditError, match="TRUSTEDIT_DATA_DIR"):
        rm.run_retention(model, tok, tasks=["piqa"])
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "boolq_validation_first2000.jsonl").write_text(
        "".join(json.dumps({"idx": i, "question": "is the capital of France Paris", "passage": "Paris", "answer": i % 2 == 0}) + "\n"
                for i in range(3)))
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text(" = A = \n the capital of France is Paris . \n = B = \n Rome . \n")
    r = rm.run_retention(model, tok, limit=2)
    assert set(r) == {"boolq/acc", "wikitext/ppl"}  # lm-eval reports acc alone for BoolQ
    assert r["boolq/acc"].n == 2 and r["wikitext/ppl"].n == 2
    assert set(r.missing) == {"piqa", "arc_easy", "hellaswag", "commonsenseqa", "mmlu"}
    with pytest.raises(TrusteditError, match="unknown"):
        rm.run_retention(model, tok, tasks=["nope"])


def test_gpt2_and_full_logits_fallback_agree(gpt2_factory, monkeypatch):
    loaded = gpt2_factory(seed=1)
    model, tok = loaded.model, loaded.tokenizer
    want = [_manual_ll(model, tok, c, x, False) for c, x in REQS]
    got = loglikelihood(model, tok, REQS, batch_size=4, add_bos=False)
    monkeypatch.setattr(rm, "_supports_logits_to_keep", lambda m: False)
    full = loglikelihood(model, tok, REQS, batch_size=4, add_bos=False)
    for g, f, w in zip(got, full, want):
        assert g[0] == pytest.approx(w[0], abs=1e-4) and f[0] == pytest.approx(w[0], abs=1e-4)
        assert g[1:] == f[1:] == w[1:]


@pytest.mark.parametrize("factory", ["llama", "gpt2"])
def test_shared_context_loglikelihood_equals_full_passes(factory, llama_factory, gpt2_factory):
    """Encoding each context once and scoring its continuations on the shared KV cache gives the
    log-likelihoods of full passes (to float rounding), the same token counts and greedy flags."""
    from trustedit.metrics.retention import loglikelihood, loglikelihood_shared

    lm = llama_factory() if factory == "llama" else gpt2_factory()
    reqs = [("Question: What is the capital of France ?\nAnswer:", c) for c in (" Paris", " Rome is the capital",
                                                                                " Berlin . Germany")]
    reqs += [("Who wrote Hamlet ?", c) for c in (" Shakespeare", " the king of France")]
    reqs += [("", "The Nile is the longest river"), ("a", " b"), ("Who wrote Hamlet ?", " Shakespeare")]
    for bs in (1, 2, 16):
        full = loglikelihood(lm.model, lm.tokenizer, reqs, bs)
        shared = loglikelihood_shared(lm.model, lm.tokenizer, reqs, bs)
        for a, b in zip(full, shared):
            assert a[1:] == b[1:]
            assert a[0] == pytest.approx(b[0], abs=1e-4)
    # a request longer than the window falls back to the full (left-truncated) pass
    long = [("Paris " * 200, " Rome")]
    assert loglikelihood_shared(lm.model, lm.tokenizer, long, 2) == loglikelihood(lm.model, lm.tokenizer, long, 2)


def _tok_with(specials, bos, eos, add_bos=False):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*specials, "<unk>", "The", "cat", "."])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token=bos, eos_token=eos, unk_token="<unk>")
    tok.add_bos_token = add_bos
    return tok


def test_a_sentence_without_context_is_conditioned_on_the_document_separator():
    """SmolLM2-Instruct's BOS is the chat role marker <|im_start|>: a sentence scored without context
    starts after the pretraining document separator <|endoftext|> instead (not the role marker)."""
    from trustedit.metrics.retention import encode_pair, prefix_token, prefix_token_label

    smol = _tok_with(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_start|>", "<|im_end|>")
    assert prefix_token(smol) == 0 and "<|endoftext|>" in prefix_token_label(smol)
    ctx, cont = encode_pair(smol, "", "The cat .", add_bos=False)
    assert ctx == [0] and cont == smol("The cat .", add_special_tokens=False)["input_ids"]
    # a model pretrained with BOS prepended (LLaMA, Gemma) keeps its BOS
    llama = _tok_with(["<s>", "</s>"], "<s>", "</s>", add_bos=True)
    assert prefix_token(llama) == llama.bos_token_id
    # neither: BOS, then EOS
    plain = _tok_with(["<s>", "</s>"], "<s>", "</s>")
    assert prefix_token(plain) == plain.bos_token_id


def test_acc_norm_only_where_lm_eval_reports_it(monkeypatch, plain_tokenizer):
    """acc_norm over " no"/" yes" or single letters is noise (it reported BoolQ 70.0 -> 46.7 with an
    interval excluding 0): BoolQ, CommonsenseQA and MMLU report acc alone, as lm-eval does."""
    monkeypatch.setattr(rm, "loglikelihood_shared", lambda *a, **k: [(-1.0, 1, False), (-2.0, 1, False)])
    items = [MCItem("a", "ctx", [" no", " yes"], 0)]
    for task in ("boolq", "commonsenseqa", "mmlu"):
        assert set(multiple_choice(None, plain_tokenizer, items, task=task, add_bos=False)) == {"acc"}
    for task in ("piqa", "arc_easy", "hellaswag"):
        assert set(multiple_choice(None, plain_tokenizer, items, task=task, add_bos=False)) == {"acc", "acc_norm"}


def test_retention_reports_the_pooled_accuracy_that_sets_its_resolution():
    from trustedit.suites.base import Context, Items
    from trustedit.suites.retention import SUITE, RetentionOptions

    items = Items("retention", {"piqa": [MCItem("a", "c", [" x", " y"], 0)], "boolq": [MCItem("b", "c", [" no", " yes"], 1)]},
                  "sha256:x", {}, RetentionOptions())
    raw = {"bos": False, "tasks": {"piqa": {"lls": [-1.0, -2.0], "seconds": 0, "n_requests": 2},
                                   "boolq": {"lls": [-1.0, -2.0], "seconds": 0, "n_requests": 2}}}
    s = SUITE.score(raw, None, items, Context())
    assert s["pooled/acc"].values == [1.0, 0.0] and "resolves" in s["pooled/acc"].protocol
