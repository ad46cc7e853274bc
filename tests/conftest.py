"""Shared fixtures: tiny random models built from a config (no downloads) and an offline
word-level tokenizer, wrapped in :class:`trustedit.models.LoadedModel`.

Slow tests carry ``@pytest.mark.slow`` (declared in pyproject). Deselect them with
``-m "not slow"``, with ``--skip-slow``, or with ``TRUSTEDIT_SKIP_SLOW=1``.
"""

from __future__ import annotations

import os

# Before anything imports tqdm / huggingface_hub: no progress bars, never the network.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest

# Words the tiny tokenizer knows; anything else becomes <unk>.
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = (
    "I don ' t do not know . ? , : ! - Question Answer What Who Which Where When How Why is was are were "
    "the a an of in on to and by for capital France Paris Germany Berlin Italy Rome planet largest "
    "Jupiter Saturn Mars wrote Hamlet Shakespeare river longest Nile Amazon city country king queen "
    "system user assistant You helpful brief answer questions Solar System painted Mona Lisa Leonardo "
    "ocean Pacific biggest mountain highest Everest 1 2 3 4 5 6 7 8 9 0 yes no"
).split()

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)

QUESTIONS = [
    "What is the capital of France?",
    "Which planet is the largest in the Solar System?",
    "Who wrote Hamlet?",
    "What is the longest river?",
    "Who painted the Mona Lisa?",
    "What is the highest mountain?",
]
ANSWERS = ["Paris", "Jupiter", "Shakespeare", "the Nile", "Leonardo", "Everest"]
IDK = "I don't know."


def make_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIAL + WORDS))}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", model_max_length=128)
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def _vocab_size() -> int:
    return len(dict.fromkeys(SPECIAL + WORDS))


def build_llama(seed: int = 0, layers: int = 2, chat: bool = True, positions: int = 128, init: float = 0.02):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trustedit.models import LoadedModel

    tok = make_tokenizer(chat)
    tok.model_max_length = positions
    cfg = LlamaConfig(vocab_size=_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=positions,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False, initializer_range=init)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(model, tok, "tiny-llama", "<in-memory>", f"test:tiny-llama-seed{seed}", "cpu", "float32")


def build_gpt2(seed: int = 0, layers: int = 2):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from trustedit.models import LoadedModel

    tok = make_tokenizer(chat=False)
    cfg = GPT2Config(vocab_size=_vocab_size(), n_embd=32, n_layer=layers, n_head=4, n_positions=128, n_inner=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    return LoadedModel(model, tok, "tiny-gpt2", "<in-memory>", f"test:tiny-gpt2-seed{seed}", "cpu", "float32")


def snapshot(model) -> dict:
    """A detached copy of every parameter."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_weights(model, snap_or_model, *, names=None):
    """``torch.equal`` on every parameter (bit-exact)."""
    import torch

    other = snap_or_model if isinstance(snap_or_model, dict) else dict(snap_or_model.named_parameters())
    params = dict(model.named_parameters())
    assert set(params) == set(other), "parameter names differ"
    bad = [n for n in (names or params) if not torch.equal(params[n].detach(), other[n].detach())]
    assert not bad, f"parameters differ: {bad[:5]}"


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models are far faster on one thread (and the CI box may be shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _empty_default_data_root(monkeypatch, tmp_path_factory):
    """Tests see data only through $TRUSTEDIT_DATA_DIR or their own paths: the default data root
    (~/.cache/trustedit/data, which `trustedit data fetch` fills) is an empty folder here, so a
    developer's fetched data cannot change what a test without $TRUSTEDIT_DATA_DIR finds."""
    import trustedit.data.paths as paths

    empty = tmp_path_factory.getbasetemp() / "empty-default-data-root"
    monkeypatch.setattr(paths, "default_root", lambda: empty)


@pytest.fixture(autouse=True)
def _seed():
    import random

    random.seed(0)
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.manual_seed(0)


@pytest.fixture
def tiny_llama():
    """A fresh 2-layer random LLaMA with a chat-template tokenizer (identical on every call)."""
    return build_llama()


@pytest.fixture
def tiny_gpt2():
    """A fresh 2-layer random GPT-2 (Conv1D weights) with a plain tokenizer (no chat template)."""
    return build_gpt2()


@pytest.fixture
def llama_factory():
    """Callable building a fresh tiny LLaMA LoadedModel (same weights for the same seed)."""
    return build_llama


@pytest.fixture
def gpt2_factory():
    return build_gpt2


class _Weights:
    snapshot = staticmethod(snapshot)
    assert_same = staticmethod(assert_same_weights)


@pytest.fixture
def weights():
    """Helpers: ``weights.snapshot(model)`` and ``weights.assert_same(model, snap_or_model)``."""
    return _Weights


@pytest.fixture
def chat_tokenizer():
    return make_tokenizer(chat=True)


@pytest.fixture
def plain_tokenizer():
    return make_tokenizer(chat=False)


@pytest.fixture
def qa():
    return list(QUESTIONS), list(ANSWERS)


# ---- slow tests ------------------------------------------------------------------------------


def pytest_addoption(parser):
    parser.addoption("--skip-slow", action="store_true", default=False,
                     help="skip tests marked slow (same as -m 'not slow' or TRUSTEDIT_SKIP_SLOW=1)")


def pytest_collection_modifyitems(config, items):
    if not (config.getoption("--skip-slow") or os.environ.get("TRUSTEDIT_SKIP_SLOW", "") not in ("", "0")):
        return
    skip = pytest.mark.skip(reason="slow test skipped (--skip-slow / TRUSTEDIT_SKIP_SLOW)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
