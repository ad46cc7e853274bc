"""Key statistics C = E[k kᵀ] of the down-projection inputs: the right moment, cached by model and layer."""

from __future__ import annotations

import torch

from trustedit.methods.key_stats import key_second_moments

TEXTS = ["Paris is the capital of France . " * 20, "Jupiter is the largest planet . " * 20]


def test_second_moment_equals_the_captured_keys_and_is_cached(llama_factory, tmp_path, monkeypatch):
    from trustedit import arch
    from trustedit.hooks import capture

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    lm = llama_factory()
    C, rec = key_second_moments(lm, [0, 1], n_tokens=100, window=32, texts=TEXTS)
    assert set(C) == {0, 1} and C[0].shape == (64, 64) and rec["cached"] == [] and rec["tokens"] == 100
    # the same moment by hand, from the keys of the same 100 token positions
    eos = lm.tokenizer.eos_token_id
    ids = []
    for t in TEXTS:
        ids += lm.tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
    ids = ids[:100]
    name = arch.layer_path(lm.model, 1, arch.arch_for(lm.model).down)
    keys = []
    with torch.no_grad(), capture(lm.model, [name], what="input") as st:
        for i in range(0, 100, 32):
            lm.model(input_ids=torch.tensor([ids[i:i + 32]]))
    keys = torch.cat([k.reshape(-1, 64) for k in st[name]]).double()
    assert keys.shape[0] == 100
    assert torch.allclose(C[1], keys.T @ keys / 100, rtol=1e-5, atol=1e-7)
    # test models have no stable fingerprint: nothing is cached for them
    assert not (tmp_path / "cache").exists()
    lm.fingerprint = "folder-sha256:abc"
    C1, r1 = key_second_moments(lm, [1], n_tokens=100, window=32, texts=TEXTS)
    C2, r2 = key_second_moments(lm, [0, 1], n_tokens=100, window=32, texts=TEXTS)
    assert r1["cached"] == [] and r2["cached"] == [1] and torch.equal(C1[1], C2[1])
    assert len(list((tmp_path / "cache" / "stats").glob("*.pt"))) == 2
    # another sample size, text or model is another entry
    _, r3 = key_second_moments(lm, [1], n_tokens=96, window=32, texts=TEXTS)
    assert r3["cached"] == []


def test_too_little_text_is_a_usage_error(llama_factory):
    import pytest

    from trustedit.errors import UsageError

    with pytest.raises(UsageError, match="fewer than the 1000000 asked for"):
        key_second_moments(llama_factory(), [0], n_tokens=1_000_000, texts=TEXTS)
