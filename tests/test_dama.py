"""DAMA and INLP (trustedit.bias): the projection patch, PLS against scikit-learn, value vectors,
the prompt generator, INLP guarding, GPT-2 Conv1D orientation. Tiny random models, offline."""

from __future__ import annotations

import json

import pytest
import torch

from trustedit.bias import dama
from trustedit.bias.prompts import (DEFAULT_TEMPLATES, BiasPrompt, as_prompts, generate_prompts, load_professions,
                                    load_train_prompts, write_prompts)
from trustedit.patch import Patch

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
PROFESSIONS = [("nurse", -0.8), ("secretary", -0.6), ("dancer", -0.4), ("teacher", -0.2), ("doctor", 0.3),
               ("surgeon", 0.5), ("engineer", 0.6), ("carpenter", 0.8)]
TEMPLATES = ["{} said that", "{} laughed because", "{} wanted that"]
WORDS = ("The the a an is was he she they him her said that laughed because wanted went home . , and of to in "
         "man woman king queen day night very good bad " + " ".join(p for p, _ in PROFESSIONS)).split()


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIAL + WORDS))}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=128)


def _llama(layers=4, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from trustedit.models import LoadedModel

    tok = _tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LoadedModel(LlamaForCausalLM(cfg).eval(), tok, "tiny-llama", "<in-memory>", f"test:dama-llama-{seed}", "cpu", "float32")


def _gpt2(layers=4, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    from trustedit.models import LoadedModel

    tok = _tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=layers, n_head=4, n_positions=128, n_inner=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return LoadedModel(GPT2LMHeadModel(cfg).eval(), tok, "tiny-gpt2", "<in-memory>", f"test:dama-gpt2-{seed}", "cpu", "float32")


def _gemma3(layers=4, seed=0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from trustedit.models import LoadedModel

    tok = _tokenizer()
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
                           sliding_window=4, final_logit_softcapping=5.0, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return LoadedModel(Gemma3ForCausalLM(cfg).eval(), tok, "tiny-gemma3", "<in-memory>", f"test:dama-gemma3-{seed}", "cpu", "float32")


def _prompts():
    return generate_prompts(PROFESSIONS, TEMPLATES)


def _cfg(**kw):
    # v_lr is absolute (as the reference's): the tiny models' last hidden states have norm ~0.1
    base = dict(context_lengths=[3], contexts_per_length=2, max_prompts=0, v_steps=5, components=0.125, batch_size=8,
                v_lr=0.01)
    return dama.DAMAConfig(**{**base, **kw})


def _param(model, name):
    return dict(model.named_parameters())[name]


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_same(model, snap):
    bad = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), snap[n])]
    assert not bad, f"parameters differ: {bad[:5]}"


def _down_as_out_in(model, name, conv1d):
    return dama.down_weight(_param(model, name).detach(), conv1d)


# ---- PLS against scikit-learn --------------------------------------------------------------------


def _pls_data(seed=0, n=300, d=14, m=6):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3.0, d, dtype=torch.float64) + 2.0
    Y = X[:, :m] @ torch.randn(m, m, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, m, generator=g, dtype=torch.float64)
    return X, Y


@pytest.mark.parametrize("exact", [True, False])
def test_torch_pls_matches_sklearn_x_weights(exact):
    from sklearn.cross_decomposition import PLSRegression

    X, Y = _pls_data()
    k = 5
    ref = PLSRegression(n_components=k, scale=False, max_iter=20000, tol=1e-15).fit(X.numpy(), Y.numpy())
    Wref = torch.from_numpy(ref.x_weights_)
    info = {}
    W = dama.pls_x_weights(X.float(), Y.float(), k, exact=exact, max_iter=5000, tol=1e-12, info=info)
    assert W.shape == (14, k) and len(info["iterations"]) == k
    # per component, same vector and same sign (scikit-learn's svd_flip convention)
    torch.testing.assert_close(W.double(), Wref, atol=2e-4 if exact else 2e-3, rtol=0)
    # and the same subspace
    Q, Qref = dama.orthonormal_basis(W), dama.orthonormal_basis(Wref.float())
    assert float((Q @ Q.T - Qref @ Qref.T).norm()) < 1e-3
    # NIPALS x-weights are orthonormal
    torch.testing.assert_close(W.T @ W, torch.eye(k), atol=1e-4, rtol=0)


def test_pls_single_target_and_early_stop():
    from sklearn.cross_decomposition import PLSRegression

    X, Y = _pls_data(seed=1, m=1)
    ref = PLSRegression(n_components=3, scale=False).fit(X.numpy(), Y.numpy())
    W = dama.pls_x_weights(X.float(), Y.float()[:, 0], 3)
    torch.testing.assert_close(W.double(), torch.from_numpy(ref.x_weights_), atol=2e-4, rtol=0)
    # X of rank 2 (after centring): no covariance is left after two components
    g = torch.Generator().manual_seed(2)
    X2 = torch.randn(50, 2, generator=g) @ torch.randn(2, 8, generator=g)
    W2 = dama.pls_x_weights(X2, torch.randn(50, 3, generator=g), 6)
    assert W2.shape[1] == 2


def test_regression_data_stack_and_contrast():
    H = torch.randn(5, 4)
    V = torch.randn(3, 5, 4)
    X, Y = dama.regression_data(H, V, "stack")
    assert X.shape == (15, 4) and torch.equal(X[5:10], H) and torch.equal(Y[10:], V[2])
    X, Y = dama.regression_data(H, V, "contrast")
    assert torch.equal(X, H) and torch.equal(Y, V[0] - V[1])
    from trustedit.errors import UsageError

    with pytest.raises(UsageError):
        dama.regression_data(H, V, "nope")


# ---- the projection delta -------------------------------------------------------------------------


@pytest.mark.parametrize("conv1d", [False, True])
def test_projection_delta_removes_exactly_the_subspace(conv1d):
    from trustedit.patch import Delta

    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 40, generator=g)  # (d_model, d_ff)
    Q = dama.orthonormal_basis(torch.randn(16, 3, generator=g))
    stored = W.t().contiguous() if conv1d else W.clone()
    delta = dama.projection_delta(stored, Q, conv1d)
    assert isinstance(delta, Delta) and delta.kind == "lowrank"
    assert delta.numel == 3 * (16 + 40)
    torch.testing.assert_close(dama.projection_basis(delta, conv1d), Q)
    new = stored + delta.materialise(stored)
    Wp = dama.down_weight(new, conv1d)
    torch.testing.assert_close(Wp, W - Q @ (Q.t() @ W), atol=1e-5, rtol=0)
    assert float((Q.t() @ Wp).norm()) < 1e-4 * float(W.norm())
    # the orthogonal complement is untouched
    R = torch.linalg.qr(torch.cat([Q, torch.randn(16, 13, generator=g)], 1))[0][:, 3:]
    torch.testing.assert_close(R.t() @ Wp, R.t() @ W, atol=1e-5, rtol=0)


def test_layers_and_components_resolution():
    from trustedit.errors import UsageError

    assert dama.resolve_layers(0.66, 0.93, 32) == list(range(21, 30))  # the paper's LLaMA-7B range
    assert dama.resolve_layers(0.66, 0.93, 30) == list(range(19, 28))
    assert dama.resolve_layers(21.0, 29.0, 32) == list(range(21, 30))  # --set first_layer=21
    assert dama.resolve_layers(-2, -1, 4) == [2, 3]
    with pytest.raises(UsageError):
        dama.resolve_layers(0.9, 0.5, 10)
    assert dama.resolve_components(0.0625, 4096) == 256 and dama.resolve_components(1024.0, 4096) == 1024
    assert dama.resolve_components(0.0625, 576) == 36 and dama.resolve_components(9999, 64) == 64
    with pytest.raises(UsageError):
        dama.resolve_components(0, 64)


def test_config_resolves_from_set_items():
    cfg = dama.DAMAConfig.resolve(sets=["first_layer=21", "components=256", "targets=he,she", "context_lengths=5,10",
                                        "values=contrast"])
    assert cfg.first_layer == 21.0 and cfg.components == 256.0 and cfg.targets == ["he", "she"]
    assert cfg.values == "contrast" and [int(x) for x in cfg.context_lengths] == [5, 10]


def test_registry_lists_debias_methods():
    from trustedit.jobs import JOBS
    from trustedit.registry import get_method

    assert JOBS["debias"].methods == ("dama", "inlp")
    assert get_method("dama").config is dama.DAMAConfig and get_method("dama").fit is dama.fit
    from trustedit.bias import inlp

    assert get_method("inlp").config is inlp.INLPConfig
    for name in ("dama", "inlp"):
        for field, _, help in get_method(name).config.help_table():
            assert help, f"{name}.{field} has no help text"


# ---- prompts ------------------------------------------------------------------------------------------


def test_generate_prompts_records_and_targets(tmp_path):
    ps = generate_prompts(["nurse", ("plastic_surgeon", 0.4), ("king", 1.0, 0.0), ("queen", -1.0, -0.2)],
                          templates=["{} said that", "I saw {} when"], pair=("he", "she"))
    assert len(ps) == 8
    assert ps[0] == BiasPrompt("The nurse said that", "The nurse", 0.0, "she")
    assert ps[3].prompt == "I saw The plastic surgeon when" and ps[3].score == 0.4 and ps[3].target == "she"
    assert ps[4].score == 0.0  # the stereotypical score of a triple, not the factual one
    assert ps[7].target == "he"  # anti-stereotypical for a negative score
    other = generate_prompts([("Sarah", -0.5)], templates=["{} works as a"], pair=("engineer", "nurse"), article="")
    assert other[0].subject == "Sarah" and other[0].prompt == "Sarah works as a" and other[0].target == "engineer"
    with pytest.raises(ValueError):
        generate_prompts(["x"], templates=["no slot"])
    path = write_prompts(ps, tmp_path / "p.json")
    assert load_train_prompts(path) == ps
    assert as_prompts(json.loads(path.read_text())) == ps


@pytest.mark.data
def test_prompts_from_the_bias_data_loaders():
    from trustedit.data.paths import find

    if find("dama/train_dama.json") is None:
        pytest.skip("needs $TRUSTEDIT_DATA_DIR/dama")
    from trustedit.data.bias import load_dama_professions, load_dama_train

    assert as_prompts(load_dama_train()) == load_train_prompts()
    gen = generate_prompts(load_dama_professions()[:3], TEMPLATES)
    assert len(gen) == 9 and gen[0].subject == "The " + load_dama_professions()[0].name.replace("_", " ")


@pytest.mark.data
def test_generator_reproduces_train_dama():
    from trustedit.data.paths import find

    if find("dama/train_dama.json") is None or find("dama/professions.json") is None:
        pytest.skip("needs $TRUSTEDIT_DATA_DIR/dama")
    train = load_train_prompts()
    assert len(train) == 2409
    subjects = {p.subject for p in train}
    profs = [p for p in load_professions() if f"The {p[0]}" in subjects]
    assert len(profs) == 219
    gen = generate_prompts(profs, DEFAULT_TEMPLATES)
    key = lambda p: (p.prompt, p.subject, round(p.score, 6), p.target)  # noqa: E731
    assert sorted(map(key, gen)) == sorted(map(key, train))


def test_load_train_prompts_rejects_bad_records(tmp_path):
    from trustedit.errors import DataError

    f = tmp_path / "t.json"
    f.write_text(json.dumps([{"prompt": "The nurse said that", "subject": "The doctor"}]))
    with pytest.raises(DataError, match="does not occur"):
        load_train_prompts(f)
    f.write_text(json.dumps([{"subject": "The doctor"}]))
    with pytest.raises(DataError, match="prompt"):
        load_train_prompts(f)


# ---- representation helpers --------------------------------------------------------------------


@pytest.mark.parametrize("build", [_llama, _gpt2, _gemma3])
def test_output_head_on_last_layer_states_equals_model_logits(build):
    """The value-vector optimisation runs only the head on cached last-layer states: exact."""
    lm = build()
    fmt = dama.plain_format()
    seqs = [fmt.prompt_ids(lm.tokenizer, p.prompt) for p in _prompts()[:5]] + [[1, 5, 6]]
    h = dama.last_token_states(lm.model, dama.last_layer_name(lm.model), seqs, batch_size=4)
    logits = dama.output_head(lm.model)(h)
    for i, s in enumerate(seqs):
        with torch.no_grad():
            want = lm.model(input_ids=torch.tensor([s])).logits[0, -1]
        torch.testing.assert_close(logits[i], want, atol=1e-4, rtol=1e-4)


def test_last_token_states_ignore_padding_and_stop_early():
    lm = _llama()
    seqs = [[1, 5, 6, 7, 8, 9], [1, 5], [1, 7, 8]]
    name = "model.layers.1.mlp.down_proj"
    batched = dama.last_token_states(lm.model, name, seqs, what="input", batch_size=3)
    for i, s in enumerate(seqs):
        alone = dama.last_token_states(lm.model, name, [s], what="input", batch_size=1)
        torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-5)
    calls = []
    h = lm.model.model.layers[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        dama.last_token_states(lm.model, name, seqs, what="input")
    finally:
        h.remove()
    assert not calls, "the forward pass went past the captured module"
    assert not lm.model.model.layers[1].mlp.down_proj._forward_pre_hooks, "hook left behind"


def test_target_token_ids_in_context():
    from trustedit.errors import UsageError

    tok = _tokenizer()
    ids, lens = dama.target_token_ids(tok, dama.plain_format(), "The nurse said that", ["he", "she", "they"])
    assert ids == tok.convert_tokens_to_ids(["he", "she", "they"]) and lens == [1, 1, 1]
    with pytest.raises(UsageError, match="distinct"):
        dama.target_token_ids(tok, dama.plain_format(), "The nurse said that", ["zzz", "yyy"])  # both <unk>


# ---- value vectors ---------------------------------------------------------------------------------


def _hidden(lm, n=4, contexts=("",)):
    fmt = dama.plain_format()
    prompts = _prompts()[:n]
    rewrite, kl = dama.build_sequences(lm.tokenizer, fmt, prompts, list(contexts), "{} is a")
    h = dama.last_token_states(lm.model, dama.last_layer_name(lm.model), rewrite + kl)
    C = len(contexts)
    return h[: n * C].view(n, C, -1), h[n * C:].view(n, 1, -1)


def test_value_vector_step_reduces_its_loss():
    lm = _llama()
    with torch.no_grad():  # a random tiny model's logits are nearly flat: give its head some range
        lm.model.lm_head.weight.mul_(30)
    h_rw, h_kl = _hidden(lm, contexts=("", "good day", "the king and the queen"))
    tids = lm.tokenizer.convert_tokens_to_ids(["he", "she", "they"])
    V, rec = dama.optimise_values(dama.output_head(lm.model), h_rw, h_kl, tids, steps=20, lr=0.01)
    assert V.shape == (3, 4, 32)
    assert len(rec["loss"]) == 21
    assert rec["loss"][-1] < 0.5 * rec["loss"][0]
    assert rec["p_target"][-1] > rec["p_target"][0]
    assert torch.isfinite(V).all() and float(V.abs().sum()) > 0
    # every delta stays within 4x the hidden state's norm
    assert bool((V.norm(dim=-1) <= 4 * h_rw[:, 0].norm(dim=-1)[None] + 1e-4).all())


def test_value_vectors_of_a_batch_equal_one_prompt_at_a_time():
    lm = _llama()
    h_rw, h_kl = _hidden(lm, n=3, contexts=("", "good day"))
    head = dama.output_head(lm.model)
    tids = lm.tokenizer.convert_tokens_to_ids(["he", "she"])
    together, _ = dama.optimise_values(head, h_rw, h_kl, tids, steps=6, lr=0.01)
    for i in range(3):
        alone, _ = dama.optimise_values(head, h_rw[i: i + 1], h_kl[i: i + 1], tids, steps=6, lr=0.01)
        torch.testing.assert_close(together[:, i: i + 1], alone, atol=1e-4, rtol=1e-4)


# ---- DAMA end to end on tiny models ------------------------------------------------------------


class _Stages:
    def __init__(self):
        self.names = []

    def __call__(self, name):
        from contextlib import nullcontext

        self.names.append(name)
        return nullcontext()


@pytest.mark.parametrize("build, conv1d", [(_llama, False), (_gpt2, True)])
def test_dama_projects_out_its_subspace_and_reverts_bit_exact(build, conv1d):
    lm = build()
    model = lm.model
    base = _snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    stages = _Stages()
    patch = dama.fit(lm, _prompts(), _cfg(), stages=stages)
    _assert_same(model, base)  # fit leaves the model as it was
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    down = "mlp.c_proj" if conv1d else "mlp.down_proj"
    prefix = "transformer.h" if conv1d else "model.layers"
    names = [f"{prefix}.{i}.{down}.weight" for i in (2, 3)]  # 0.66..0.93 of 4 layers
    assert sorted(patch.deltas) == names
    tr = patch.manifest["training"]
    assert tr["layers"] == [2, 3] and tr["components"] == 4 and tr["prompts"] == 24
    assert len(tr["contexts"]) == 3 and tr["contexts"][0] == ""
    assert tr["value_loss_last"] < tr["value_loss_first"]
    for key in ("dama/contexts", "dama/value_vectors/hidden", "dama/value_vectors/optimise", "dama/statistics/L2",
                "dama/pls/L3"):
        assert key in tr["timings_s"] and key in stages.names
    patch.apply(model)
    for name in names:
        d = patch.deltas[name]
        assert d.kind == "lowrank"
        Q = dama.projection_basis(d, conv1d)
        assert Q.shape == (32, 4)
        torch.testing.assert_close(Q.t() @ Q, torch.eye(4), atol=1e-5, rtol=0)
        W_new = _down_as_out_in(model, name, conv1d)
        W_old = dama.down_weight(base[name], conv1d)
        assert float((Q.t() @ W_new).norm()) < 1e-5 * float(W_old.norm())
        torch.testing.assert_close(W_new, W_old - Q @ (Q.t() @ W_old), atol=1e-5, rtol=0)
    # functional check: the edited layer's feed-forward output (bias aside) has no component in span(Q)
    u = torch.randn(5, 64)
    mod = dict(model.named_modules())[names[1][: -len(".weight")]]
    with torch.no_grad():
        out = mod(u) - (mod.bias if getattr(mod, "bias", None) is not None else 0)
    assert float((out @ dama.projection_basis(patch.deltas[names[1]], conv1d)).norm()) < 1e-4 * float(out.norm())
    patch.revert(model)
    _assert_same(model, base)


def test_dama_saved_patch_on_fresh_base_equals_in_memory_edit(tmp_path):
    lm = _llama()
    patch = dama.fit(lm, _prompts(), _cfg(values="contrast", targets=["he", "she"]))
    patch.manifest["base_model"] = {"fingerprint": lm.fingerprint}
    patch.apply(lm.model)
    folder = patch.save(tmp_path / "patch")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["method"] == "dama" and all(v["kind"] == "lowrank" for v in manifest["deltas"].values())
    loaded = Patch.load(folder)
    fresh = _llama()
    loaded.apply(fresh.model, check_fingerprint=fresh.fingerprint)
    _assert_same(fresh.model, _snapshot(lm.model))
    loaded.revert(fresh.model)
    _assert_same(fresh.model, _snapshot(_llama().model))


def test_dama_is_deterministic_and_respects_max_prompts():
    a = dama.fit(_llama(), _prompts(), _cfg(max_prompts=10, v_steps=3))
    b = dama.fit(_llama(), _prompts(), _cfg(max_prompts=10, v_steps=3))
    assert a.manifest["training"]["prompts"] == 10 and a.manifest["training"]["prompts_available"] == 24
    assert a.manifest["training"]["contexts"] == b.manifest["training"]["contexts"]
    for n in a.deltas:
        torch.testing.assert_close(a.deltas[n].tensors["B"], b.deltas[n].tensors["B"])


def test_dama_edits_change_later_layer_statistics():
    """Layers are edited in ascending order and later statistics come from the edited model."""
    lm = _llama()
    cfg = _cfg()
    patch = dama.fit(lm, _prompts(), cfg)
    # refit layer 3 alone on the *unedited* model: a different projection than in the sequential fit
    alone = dama.fit(lm, _prompts(), _cfg(first_layer=3.0, last_layer=3.0))
    name = "model.layers.3.mlp.down_proj.weight"
    Q1, Q2 = dama.projection_basis(patch.deltas[name], False), dama.projection_basis(alone.deltas[name], False)
    assert float((Q1 @ Q1.T - Q2 @ Q2.T).norm()) > 1e-3
    name2 = "model.layers.2.mlp.down_proj.weight"
    torch.testing.assert_close(dama.projection_basis(patch.deltas[name2], False),
                               dama.projection_basis(dama.fit(lm, _prompts(), _cfg(first_layer=2.0, last_layer=2.0)).deltas[name2], False))


@pytest.mark.parametrize("build", [_llama, _gpt2, _gemma3])
def test_residual_replay_equals_the_full_forward(build):
    """Replayed passes skip the layers below the replay layer and give the same statistics."""
    lm = build(layers=5)
    fmt = dama.plain_format()
    seqs = [fmt.prompt_ids(lm.tokenizer, p.prompt) for p in _prompts()[:11]]
    replay = dama.ResidualReplay(lm.model, 2)
    first = dama.layer_statistics(lm, 2, seqs, 1, batch_size=4, replay=replay)  # records
    assert len(replay.states) == 3
    from trustedit import arch

    layers = arch.get_module(lm.model, arch.arch_for(lm.model).layers)
    calls = []
    hooks = [layers[i].register_forward_hook(lambda *a, i=i: calls.append(i)) for i in range(5)]
    try:
        for L in (2, 3, 4):
            full = dama.layer_statistics(lm, L, seqs, 1, batch_size=4)
            ran = len(calls)
            fast = dama.layer_statistics(lm, L, seqs, 1, batch_size=4, replay=replay)
            assert not [i for i in calls[ran:] if i < 2], "a replayed pass ran a skipped layer"
            torch.testing.assert_close(fast, full, atol=0, rtol=0)
        torch.testing.assert_close(first, dama.layer_statistics(lm, 2, seqs, 1, batch_size=4), atol=0, rtol=0)
    finally:
        for h in hooks:
            h.remove()
    assert all(layers[i].__class__.__name__ != "Identity" for i in range(5)), "skipped layers not restored"
    with pytest.raises(ValueError):
        dama.layer_statistics(lm, 1, seqs, 1, batch_size=4, replay=replay)  # below the replay layer
    with pytest.raises(ValueError):
        dama.layer_statistics(lm, 3, seqs[:5], 1, batch_size=4, replay=replay)  # other sequences


def test_dama_fit_with_and_without_replay_agree():
    a = dama.fit(_llama(layers=6), _prompts(), _cfg(first_layer=3.0, last_layer=5.0))
    b = dama.fit(_llama(layers=6), _prompts(), _cfg(first_layer=3.0, last_layer=5.0, replay_lower_layers=False))
    assert a.manifest["training"]["lower_layers_replayed"] and not b.manifest["training"]["lower_layers_replayed"]
    for n in a.deltas:
        Qa, Qb = dama.projection_basis(a.deltas[n], False), dama.projection_basis(b.deltas[n], False)
        torch.testing.assert_close(Qa @ Qa.T, Qb @ Qb.T, atol=1e-4, rtol=0)


# ---- INLP ----------------------------------------------------------------------------------------------


def test_inlp_removes_a_linearly_separable_attribute_to_chance():
    import numpy as np

    from trustedit.bias.inlp import inlp_projection

    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 12))
    w = rng.normal(size=12)
    y = np.where(X @ w > 0, 1, -1)
    X[:, 3] += 2.0 * y  # a second, axis-aligned cue
    for clf in ("svm", "logreg"):
        Q, rec = inlp_projection(X[:600], y[:600], iterations=6, classifier=clf, X_dev=X[600:], y_dev=y[600:])
        assert rec["accuracy"][0] > 0.95
        assert rec["accuracy_after"] < 0.62, rec
        assert Q.shape == (12, rec["rank"]) and 1 <= rec["rank"] <= 6
        np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-8)


@pytest.mark.parametrize("build, conv1d, label", [(_llama, False, "score"), (_gpt2, True, "model")])
def test_inlp_fit_patch(build, conv1d, label):
    from trustedit.bias.inlp import INLPConfig, fit

    lm = build()
    base = _snapshot(lm.model)
    cfg = INLPConfig(layer=0.5, iterations=3, label=label, dev_fraction=0.25)
    patch = fit(lm, _prompts(), cfg)
    _assert_same(lm.model, base)
    name = ("transformer.h.2.mlp.c_proj" if conv1d else "model.layers.2.mlp.down_proj") + ".weight"
    assert list(patch.deltas) == [name]
    tr = patch.manifest["training"]
    assert tr["layer"] == 2 and 1 <= tr["rank"] <= 3 and len(tr["accuracy"]) == 3
    assert tr["train_examples"] + tr["dev_examples"] <= 24 and tr["dev_examples"] > 0
    Q = dama.projection_basis(patch.deltas[name], conv1d)
    patch.apply(lm.model)
    W_new = _down_as_out_in(lm.model, name, conv1d)
    assert float((Q.t() @ W_new).norm()) < 1e-5 * float(W_new.norm())
    patch.revert(lm.model)
    _assert_same(lm.model, base)
