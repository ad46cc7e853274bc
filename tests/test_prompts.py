"""Prompt/target construction, label alignment, padding invariance and batched generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trustedit.prompts import (
    IGNORE,
    Pair,
    PrefixCache,
    PromptFormat,
    batches,
    collate,
    common_prefix_len,
    generate,
    lm_loss,
    make_pairs,
    predicted_target_tokens,
    shift_for_next_token,
    token_nll,
)

SYSTEM = "You are a helpful assistant . Answer questions brief ."


@pytest.fixture(params=["llama-chat", "gpt2-plain"])
def lm(request, tiny_llama, tiny_gpt2):
    return tiny_llama if request.param == "llama-chat" else tiny_gpt2


def _pairs(lm, qa, fmt=None):
    qs, ans = qa
    return make_pairs(lm.tokenizer, fmt or PromptFormat(), qs, ans)


# ---- labels line up with the logits -------------------------------------------------------------


def test_collated_labels_line_up_with_next_token_logits(lm, qa):
    pairs = _pairs(lm, qa)
    batch = collate(pairs, lm.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lg, lab = shift_for_next_token(logits, batch["labels"], batch["input_ids"])
    assert lg.shape[:2] == lab.shape == (len(pairs), batch["input_ids"].shape[1] - 1)
    for i, p in enumerate(pairs):
        kept = lab[i][lab[i] != IGNORE].tolist()
        assert kept == p.target  # exactly the target tokens are scored, in order
        assert batch["attention_mask"][i].sum() == len(p.input_ids)


def test_teacher_forced_predictions_match_manual_positions(lm, qa):
    pairs = _pairs(lm, qa)
    preds = predicted_target_tokens(lm.model, pairs, lm.tokenizer.pad_token_id, batch_size=4)
    assert [len(x) for x in preds] == [len(p.target) for p in pairs]
    for p, pred in zip(pairs, preds):
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([p.input_ids])).logits[0]
        n = len(p.prompt)
        # the logits at position t predict token t+1: target token j is predicted at n-1+j
        manual = logits[n - 1 : n - 1 + len(p.target)].argmax(-1).tolist()
        assert pred == manual


def test_misaligned_labels_fail_the_assertion(tiny_llama, qa):
    pairs = _pairs(tiny_llama, qa)
    batch = collate(pairs, tiny_llama.tokenizer.pad_token_id)
    logits = torch.zeros(*batch["input_ids"].shape, 7)
    shifted = torch.full_like(batch["labels"], IGNORE)
    shifted[:, :-1] = batch["labels"][:, 1:]  # labels already shifted: off by one
    with pytest.raises(AssertionError, match="do not match"):
        shift_for_next_token(logits, shifted, batch["input_ids"])
    first = batch["input_ids"].clone()
    labels = torch.full_like(first, IGNORE)
    labels[:, 0] = first[:, 0]  # nothing predicts position 0
    with pytest.raises(AssertionError, match="first position"):
        shift_for_next_token(logits, labels, first)
    with pytest.raises(AssertionError, match="logits"):
        shift_for_next_token(logits[:, 1:], batch["labels"])


# ---- padding invariance -----------------------------------------------------------------------


def test_token_nll_batched_equals_unbatched(lm, qa):
    pairs = _pairs(lm, qa)
    pad = lm.tokenizer.pad_token_id
    assert len({len(p.input_ids) for p in pairs}) > 1, "need different lengths to exercise padding"
    with torch.no_grad():
        nll, n, _, _ = token_nll(lm.model, collate(pairs, pad))
        for i, p in enumerate(pairs):
            one, m, _, _ = token_nll(lm.model, collate([p], pad))
            assert int(n[i]) == int(m[0]) == len(p.target)
            torch.testing.assert_close(nll[i], one[0], atol=1e-5, rtol=0)
            # and it is the plain cross-entropy of the target tokens
            logits = lm.model(input_ids=torch.tensor([p.input_ids])).logits[0]
            k = len(p.prompt)
            ce = F.cross_entropy(logits[k - 1 : -1], torch.tensor(p.target), reduction="sum")
            torch.testing.assert_close(nll[i], ce, atol=1e-5, rtol=0)
        loss = lm_loss(lm.model, collate(pairs, pad))
    torch.testing.assert_close(loss, nll.sum() / n.sum(), atol=1e-6, rtol=0)


def test_prefix_cache_gives_same_nll_and_predictions(tiny_llama, qa):
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    fmt = PromptFormat(system=SYSTEM)
    pairs = _pairs(tiny_llama, qa, fmt)
    prefix = PrefixCache.for_sequences(model, [p.prompt for p in pairs])
    assert prefix is not None and len(prefix) >= PrefixCache.MIN_LEN  # the shared system turn
    cut = len(prefix)
    with torch.no_grad():
        full, n_full, _, _ = token_nll(model, collate(pairs, tok.pad_token_id))
        part, n_part, _, _ = token_nll(model, collate([Pair(p.prompt[cut:], p.target) for p in pairs], tok.pad_token_id),
                                       prefix)
    assert n_full.tolist() == n_part.tolist()
    torch.testing.assert_close(full, part, atol=1e-5, rtol=0)
    shared = predicted_target_tokens(model, pairs, tok.pad_token_id, share_prefix=True)
    plain = predicted_target_tokens(model, pairs, tok.pad_token_id, share_prefix=False)
    assert shared == plain


# ---- how prompts are built --------------------------------------------------------------------


def test_prompt_ids_use_chat_template_when_present(chat_tokenizer):
    tok, q = chat_tokenizer, "Who wrote Hamlet?"
    ids = PromptFormat().prompt_ids(tok, q)
    out = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
    assert ids == list(out["input_ids"] if hasattr(out, "keys") else out)
    assert tok.decode(ids).endswith("assistant :")
    assert ids[0] == tok.bos_token_id  # the template decides BOS...
    assert PromptFormat(add_bos=False).prompt_ids(tok, q) == ids  # ...add_bos does not apply
    with_system = PromptFormat(system=SYSTEM).prompt_ids(tok, q)
    assert "system" in tok.decode(with_system) and len(with_system) > len(ids)
    assert PromptFormat().describe(tok)["chat_template"] is True


def test_prompt_ids_plain_template_without_chat_template(plain_tokenizer, chat_tokenizer):
    q = "Who wrote Hamlet?"
    plain = plain_tokenizer("Question: Who wrote Hamlet?\nAnswer:", add_special_tokens=False)["input_ids"]
    assert PromptFormat(add_bos=False).prompt_ids(plain_tokenizer, q) == plain
    # chat=False forces the plain template even when the tokenizer has a chat template
    assert PromptFormat(chat=False, add_bos=False).prompt_ids(chat_tokenizer, q) == plain
    with pytest.raises(ValueError, match="no chat template"):
        PromptFormat(chat=True).prompt_ids(plain_tokenizer, q)
    custom = PromptFormat(plain_template="Q: {question} A:", add_bos=False).prompt_ids(plain_tokenizer, q)
    assert custom == plain_tokenizer("Q: Who wrote Hamlet? A:", add_special_tokens=False)["input_ids"]
    d = PromptFormat().describe(plain_tokenizer)
    assert d["chat_template"] is False and d["plain_template"] == PromptFormat.plain_template


def test_bos_policy_is_explicit(plain_tokenizer):
    tok, q = plain_tokenizer, "Who wrote Hamlet?"
    body = PromptFormat(add_bos=False).prompt_ids(tok, q)
    assert body[0] != tok.bos_token_id
    assert PromptFormat(add_bos=True).prompt_ids(tok, q) == [tok.bos_token_id] + body
    assert PromptFormat(add_bos=True).describe(tok)["bos"] is True
    # add_bos=None follows the tokenizer's own add_bos_token
    tok.add_bos_token = True
    assert PromptFormat().prompt_ids(tok, q) == [tok.bos_token_id] + body
    tok.add_bos_token = False
    assert PromptFormat().prompt_ids(tok, q) == body


def test_target_ids(chat_tokenizer, plain_tokenizer):
    eos = plain_tokenizer.eos_token_id
    words = plain_tokenizer(" I don't know.", add_special_tokens=False)["input_ids"]
    assert PromptFormat().target_ids(plain_tokenizer, "I don't know.") == words + [eos]
    assert PromptFormat(end_target_with_eos=False).target_ids(plain_tokenizer, "  I don't know. ") == words
    chat = PromptFormat().target_ids(chat_tokenizer, " I don't know.")
    assert chat == chat_tokenizer("I don't know.", add_special_tokens=False)["input_ids"] + [eos]


def test_pairs_are_token_concatenations(lm, qa):
    fmt = PromptFormat()
    for p, q, a in zip(_pairs(lm, qa), *qa):
        assert p.prompt == fmt.prompt_ids(lm.tokenizer, q)
        assert p.target == fmt.target_ids(lm.tokenizer, a)
        assert p.input_ids == p.prompt + p.target
        assert p.labels == [IGNORE] * len(p.prompt) + p.target


def test_collate_pads_right_and_truncates_prompt_from_left():
    pairs = [Pair([5, 6, 7], [8, 9]), Pair([5], [8])]
    b = collate(pairs, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 8, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE] * 3 + [8, 9], [IGNORE, 8] + [IGNORE] * 3]
    t = collate(pairs, pad_id=0, max_length=3)
    assert t["input_ids"].tolist()[0] == [7, 8, 9]  # prompt tokens dropped, target kept
    assert t["labels"].tolist()[0] == [IGNORE, 8, 9]
    with pytest.raises(ValueError, match="does not fit"):
        collate(pairs, pad_id=0, max_length=2)


def test_helpers():
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([]) == 0
    items = ["aaa", "a", "aa", "aaaa"]
    got = list(batches(items, 2, key=len))
    assert got == [([3, 0], ["aaaa", "aaa"]), ([2, 1], ["aa", "a"])]
    assert [i for i, _ in batches(items, 3)] == [[0, 1, 2], [3]]


# ---- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize("share_prefix", [False, True])
def test_generate_left_padding_batch_invariant(lm, qa, share_prefix):
    tok = lm.tokenizer
    fmt = PromptFormat(system=SYSTEM) if tok.chat_template else PromptFormat()
    short = fmt.prompt_ids(tok, "Who wrote Hamlet?")
    long = fmt.prompt_ids(tok, "Which planet is the largest in the Solar System , and what is the capital of France?")
    assert len(long) > len(short) + 5
    alone_t, alone_ids = generate(lm.model, tok, [short], max_new_tokens=8, share_prefix=share_prefix)
    both_t, both_ids = generate(lm.model, tok, [short, long], max_new_tokens=8, share_prefix=share_prefix)
    long_t, long_ids = generate(lm.model, tok, [long], max_new_tokens=8, share_prefix=share_prefix)
    assert alone_ids[0], "generated nothing: the comparison would be vacuous"
    assert both_ids[0] == alone_ids[0] and both_t[0] == alone_t[0]
    assert both_ids[1] == long_ids[0] and both_t[1] == long_t[0]
    assert all(tok.eos_token_id not in x and tok.pad_token_id not in x[-1:] for x in both_ids)


def test_generate_prefix_sharing_matches_plain(tiny_llama, qa):
    tok = tiny_llama.tokenizer
    fmt = PromptFormat(system=SYSTEM)
    prompts = [fmt.prompt_ids(tok, q) for q in qa[0]]
    assert PrefixCache.for_sequences(tiny_llama.model, prompts) is not None
    shared = generate(tiny_llama.model, tok, prompts, max_new_tokens=6, batch_size=4, share_prefix=True)
    plain = generate(tiny_llama.model, tok, prompts, max_new_tokens=6, batch_size=4, share_prefix=False)
    assert shared == plain


def test_generation_batches_hold_more_rows_than_scoring_batches(tiny_llama, qa, monkeypatch):
    """A generation batch holds GENERATION_ROWS_PER_BATCH_SIZE x batch_size prompts (its memory is a KV
    cache, not full-vocabulary logits), and the answers do not depend on the batching."""
    from trustedit import prompts as P

    tok = tiny_llama.tokenizer
    fmt = PromptFormat(system=SYSTEM)
    questions = (qa[0] * 3)[:9]
    ids = [fmt.prompt_ids(tok, q) for q in questions]
    calls = []
    real = tiny_llama.model.generate
    monkeypatch.setattr(tiny_llama.model, "generate", lambda **kw: calls.append(len(kw["input_ids"])) or real(**kw))
    wide = generate(tiny_llama.model, tok, ids, max_new_tokens=5, batch_size=2)
    rows = P.GENERATION_ROWS_PER_BATCH_SIZE * 2
    assert calls == [min(rows, 9 - k) for k in range(0, 9, rows)]
    monkeypatch.setattr(P, "GENERATION_ROWS_PER_BATCH_SIZE", 1)
    calls.clear()
    narrow = generate(tiny_llama.model, tok, ids, max_new_tokens=5, batch_size=2)
    assert calls == [2, 2, 2, 2, 1] and narrow == wide


def test_generate_greedy_matches_manual_decoding(tiny_llama):
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    prompt = PromptFormat().prompt_ids(tok, "What is the capital of France?")
    _, ids = generate(model, tok, [prompt], max_new_tokens=5, share_prefix=False)
    seq = list(prompt)
    manual = []
    with torch.no_grad():
        for _ in range(5):
            nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            manual.append(nxt)
            seq.append(nxt)
    assert ids[0] == manual


def test_generate_stop_strings_end_each_row(tiny_llama, qa):
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    fmt = PromptFormat(system=SYSTEM)
    prompts = [fmt.prompt_ids(tok, q) for q in qa[0][:3]]
    free_t, free_ids = generate(model, tok, prompts, max_new_tokens=10)
    # stop at the token string each row produced third: every row must end right there
    stops = {tok.decode([ids[2]]).strip() for ids in free_ids if len(ids) > 3}
    stops = {s for s in stops if s}
    assert stops, "no row generated enough tokens for the check"
    got_t, got_ids = generate(model, tok, prompts, max_new_tokens=10, stop_strings=tuple(stops))
    stopped = 0
    for free, got, text in zip(free_ids, got_ids, got_t):
        assert got == free[: len(got)], "stopping must not change the tokens before the stop"
        if any(s in tok.decode(free) for s in stops):  # the row ends at the first stop string it produced
            stopped += 1
            assert any(text.endswith(s) for s in stops), text
            assert len(got) < len(free) or len(free) == 10
        else:
            assert got == free
    assert stopped >= 1


@pytest.mark.parametrize("factory, chat", [("llama", True), ("llama", False), ("gpt2", False)])
def test_generate_with_targets_reuses_the_prompt_cache(factory, chat, llama_factory, gpt2_factory, qa):
    """generate(..., targets=...) answers exactly as without targets, and its teacher-forced
    predictions (on the generation's KV cache) equal predicted_target_tokens' full forward passes."""
    lm = llama_factory(chat=chat) if factory == "llama" else gpt2_factory()
    qs, ans = qa
    fmt = PromptFormat()
    pairs = make_pairs(lm.tokenizer, fmt, qs * 3, (ans + ["I don't know."] * 6)[:18])
    prompts = [p.prompt for p in pairs]
    t1, i1 = generate(lm.model, lm.tokenizer, prompts, 5, 4, stop_strings=(".",))
    t2, i2, pred = generate(lm.model, lm.tokenizer, prompts, 5, 4, stop_strings=(".",), targets=[p.target for p in pairs])
    assert (t1, i1) == (t2, i2)
    assert pred == predicted_target_tokens(lm.model, pairs, lm.tokenizer.pad_token_id, 4)
    assert [len(x) for x in pred] == [len(p.target) for p in pairs]
    with pytest.raises(ValueError, match="one non-empty"):
        generate(lm.model, lm.tokenizer, prompts[:2], 2, 2, targets=[[1]])


def test_too_long_text_is_refused_before_tokenising(plain_tokenizer):
    from trustedit.prompts import InputTooLong, guard_length, max_token_chars

    plain_tokenizer.model_max_length = 16
    limit = 16 * max_token_chars(plain_tokenizer)
    guard_length(plain_tokenizer, "a" * limit)  # might still fit: left to the token count
    with pytest.raises(InputTooLong, match="characters"):
        guard_length(plain_tokenizer, "a" * (limit + 1))
    with pytest.raises(InputTooLong):
        PromptFormat(chat=False).prompt_ids(plain_tokenizer, "a" * (limit + 1))
