"""The one evaluation engine: a new job is a declaration, a new suite is one small class, every job
writes schema-v1 results, eval runs any suite with or without a patch, inputs longer than the model's
context are refused before any pass, and every CLI mistake is one line, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

needs_data = pytest.mark.skipif(not os.environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")


@pytest.fixture
def tiny(monkeypatch, tmp_path, llama_factory):
    import trustedit.models as models

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    lm = llama_factory()
    monkeypatch.setattr(models, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(models, "resolve", lambda spec: ("tiny", "tiny", "tiny"))
    return lm


# ---- a new job and a new suite -------------------------------------------------------------------


@needs_data
def test_a_new_job_is_a_declaration(tmp_path, tiny):
    # --- the whole definition and run of a new job: suite x method (under 30 lines) ---
    from trustedit.job import JobOptions, plan, run
    from trustedit.jobs import JobSpec

    spec = JobSpec("forget-fast", "FT-M on the sanitation items, sanitation metrics only",
                   methods=("ft-m",), suites=("sanitation",))
    opts = JobOptions(out=str(tmp_path / "run"), limit=3, sets=["max_steps=1", "batch_size=2", "retain_limit=3"])
    results = run(plan(spec, opts, "ft-m", suite_values={"max_new_tokens": 3}))
    # --- end of the definition ---
    from trustedit.results import validate

    validate(results)
    assert results["task"] == "forget-fast" and list(results["metrics"]) == ["sanitation"]
    assert sorted(os.listdir(tmp_path / "run")) == ["patch", "results.json", "samples.jsonl", "summary.md"]
    assert results["metrics"]["sanitation"]["edit_success"]["post"] is not None
    t = results["timings_s"]  # each suite's share of the evaluation stages is recorded
    assert {"pre_eval/sanitation", "post_eval/sanitation"} <= set(t)
    assert t["pre_eval/sanitation"] <= t["pre_eval"] and t["post_eval/sanitation"] <= t["post_eval"]


def _says_the_suite():
    from dataclasses import dataclass

    from trustedit.metrics.scores import Score
    from trustedit.suites.base import Items, Suite, SuiteOptions, opt

    @dataclass
    class Opts(SuiteOptions):
        words: int = opt(3, "tokens per continuation")

    class SaysThe(Suite):
        name, Options, summary, citation = "says-the", Opts, "share of continuations containing 'the'", "test"

        def load(self, opts, ctx):
            return Items(self.name, ["What is the capital of France ?", "Who wrote Hamlet ?"], "sha256:t", {}, opts)

        def measure(self, lm, items, batch_size=16):
            from trustedit.prompts import generate

            ids = [lm.tokenizer(q, add_special_tokens=False)["input_ids"] for q in items.data]
            return {"texts": generate(lm.model, lm.tokenizer, ids, items.opts.words, batch_size)[0]}

        def score(self, raw, base_raw, items, ctx):
            return {"says_the": Score("says_the", "greedy; 'the' in the words", [float("the" in t.split()) for t in
                                                                                   raw["texts"]], unit="fraction",
                                      display="percent")}

    return SaysThe()


def test_a_new_suite_is_one_class(tmp_path, tiny, monkeypatch):
    import trustedit.registry as R
    from trustedit.job import JobOptions, plan, run
    from trustedit.results import validate

    suite = _says_the_suite()
    monkeypatch.setitem(R.SUITES, "says-the", "tests_suite_entry:SUITE")
    monkeypatch.setattr(R, "get_suite", lambda n: suite if n == "says-the" else R.load_entry(R.SUITES[n]))
    r = run(plan(None, JobOptions(out=str(tmp_path / "e")), None, suites=["says-the"], suite_values={"words": 2},
                 explicit={"words"}))
    validate(r)
    e = r["metrics"]["says-the"]["says_the"]
    assert e["post"] is None and e["n"] == 2 and r["suites"]["says-the"]["options"] == {"words": 2}


# ---- eval --patch ------------------------------------------------------------------------------------


@needs_data
def test_eval_with_a_patch_measures_base_and_patched(tmp_path, tiny, llama_factory, weights):
    from trustedit.job import JobOptions, plan, run
    from trustedit.jobs import JOBS
    from trustedit.results import validate

    v = {"max_new_tokens": 3, "retention": [], "fluency_tokens": 3}
    r = run(plan(JOBS["erase"], JobOptions(out=str(tmp_path / "erase"), limit=3, sets=["max_steps=2", "batch_size=2",
                                                                                       "retain_limit=3", "lr=0.05"]),
                 "ft-m", suite_values=v, explicit=set(v)))
    import trustedit.models as models
    fresh = llama_factory()  # the base model again, as `eval --model` would load it
    models.load_model = lambda *a, **k: fresh  # noqa: E731  (monkeypatch restores it after the test)
    snap = weights.snapshot(fresh.model)
    v2 = {"max_new_tokens": 3}
    e = run(plan(None, JobOptions(out=str(tmp_path / "eval"), limit=3), None, suites=["sanitation"], suite_values=v2,
                 explicit=set(v2), patch=str(tmp_path / "erase" / "patch")))
    validate(e)
    assert e["protocol"] == "patched" and e["patch_in"]["method"] == "ft-m"
    for k in ("K_S_idk_rate", "edit_success", "locality"):
        assert e["metrics"]["sanitation"][k]["post"]["value"] == r["metrics"]["sanitation"][k]["post"]["value"], k
    weights.assert_same(fresh.model, snap)  # eval leaves the model as it found it


# ---- inputs longer than the model's context --------------------------------------------------------


def _sanitation_folder(folder, question):
    folder.mkdir()
    row = {"question": "Who wrote Hamlet?", "ground_truth": "Shakespeare"}
    big = {"question": question, "ground_truth": "x"}
    (folder / "trivia_qa_train.json").write_text(json.dumps({"K_F": [row], "K_R": [row]}))
    (folder / "trivia_qa_test.json").write_text(json.dumps({"success": [row, big], "locality": [row]}))


def test_too_long_input_is_refused_before_any_pass(tmp_path, tiny, monkeypatch):
    from trustedit.errors import UsageError
    from trustedit.job import JobOptions, plan, run
    from trustedit.jobs import JOBS
    from trustedit.suites.sanitation import SanitationSuite

    _sanitation_folder(tmp_path / "d", " ".join(["I"] * 200))  # 200 tokens for a 128-position model
    calls = []
    monkeypatch.setattr(SanitationSuite, "measure", lambda *a, **k: calls.append(1))
    v = {"data": str(tmp_path / "d"), "retention": []}
    with pytest.raises(UsageError, match=r"suite sanitation, test_forget\[1\]: .* exceed the model's context of 128"):
        run(plan(JOBS["erase"], JobOptions(out=str(tmp_path / "run")), "ft-m", suite_values=v, explicit=set(v)))
    assert not calls and not (tmp_path / "run").exists()


def test_huge_input_is_refused_without_tokenising_it(tmp_path, tiny):
    """A 2 MB question is refused by its length in characters before the tokenizer sees it."""
    import time

    from trustedit.errors import UsageError
    from trustedit.job import JobOptions, plan, run
    from trustedit.jobs import JOBS

    _sanitation_folder(tmp_path / "d", "a" * 2_000_000)
    v = {"data": str(tmp_path / "d"), "retention": []}
    t = time.perf_counter()
    with pytest.raises(UsageError, match="characters"):
        run(plan(JOBS["erase"], JobOptions(out=str(tmp_path / "run")), "ft-m", suite_values=v, explicit=set(v)))
    assert time.perf_counter() - t < 10


# ---- every CLI mistake: one line, exit code 2, no traceback -------------------------------------------


def _cli(tmp_path, args, data_dir):
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TRUSTEDIT_CACHE": str(tmp_path / "cache")}
    if data_dir is not None:
        env["TRUSTEDIT_DATA_DIR"] = str(data_dir)
    p = subprocess.run([sys.executable, "-m", "trustedit", *args], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    return p.returncode, p.stderr


JOB_CMDS = {"erase": ["erase", "--no-hub"], "debias": ["debias"], "detox": ["detox"],
            "eval": ["eval", "--suite", "bias"]}


def _cases(tmp_path):
    """(name, args, data dir: None = the real one, "empty", "bad"), expected fragment of the message."""
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text("{")
    cases = []
    for job, base in JOB_CMDS.items():
        sel = ["--suite", "nope"] if job == "eval" else ["--suites", "nope"]
        cases += [
            (f"{job}: unknown suite", [*(base[:1] if job == "eval" else base), *sel], None, "unknown suite 'nope'"),
            (f"{job}: out exists", [*base, "--out", "exists"], None, "already exists"),
            (f"{job}: --limit 0", [*base, "--limit", "0"], None, "--limit 0"),
            (f"{job}: --limit -1", [*base, "--limit", "-1"], None, "--limit -1"),
            (f"{job}: --batch-size 0", [*base, "--batch-size", "0"], None, "--batch-size 0"),
            (f"{job}: missing dataset", [*base, "--out", "o1"], "empty", "trustedit data fetch"),
            (f"{job}: malformed dataset", [*base, "--out", "o2"], "bad", "invalid JSON"),
        ]
        if job != "eval":
            cases += [
                (f"{job}: unknown method", [*base, "--method", "nope"], None, "'nope' is not"),
                (f"{job}: malformed config", [*base, "--config", str(bad_cfg)], None, "invalid JSON"),
                (f"{job}: config missing", [*base, "--config", "absent.yaml"], None, "no such file"),
            ]
    cases += [
        ("erase: flag for another suite", [*JOB_CMDS["erase"], "--k", "3"], None, "unrecognized arguments: --k"),
        ("detox: flag that does not apply", ["detox", "--winobias-limit", "3"], None, "unrecognized arguments"),
        ("eval: scorer flags on bias", ["eval", "--suite", "bias", "--scorer", "detoxify", "--k", "3"], None,
         "--scorer, --k do not apply to the suite(s) dama-gender, winobias, stereoset, crows-pairs"),
        ("detox: dinm with --lambda", ["detox", "--method", "dinm", "--lambda", "2"], None, "--lambda applies to"),
        ("detox: dinm with a RTP flag", ["detox", "--method", "dinm", "--k", "3"], None, "--k does not apply"),
        ("detox: --sequential for ext-sub", ["detox", "--sequential"], None, "--sequential applies"),
        ("debias: --sweep for inlp", ["debias", "--method", "inlp", "--sweep"], None, "does not apply to --method inlp"),
        ("erase: --max-new-tokens -1", [*JOB_CMDS["erase"], "--max-new-tokens", "-1"], None, "--max-new-tokens -1"),
        ("erase: --data missing", [*JOB_CMDS["erase"], "--data", "no/such/dir"], None, "no such file or directory"),
        ("erase: unknown dataset", [*JOB_CMDS["erase"], "--dataset", "zsre"], None, "unknown dataset 'zsre'"),
        ("erase: bad --set", [*JOB_CMDS["erase"], "--set", "rank"], None, "expected key=value"),
        ("erase: unknown option", [*JOB_CMDS["erase"], "--set", "nonsense=1"], None, "unknown ScopeConfig option"),
        ("erase: unknown lora option", [*JOB_CMDS["erase"], "--method", "sanitation-lora", "--set", "nonsense=1"], None,
         "unknown SanitizationConfig option"),
        ("erase: max_over_refusal 1", [*JOB_CMDS["erase"], "--set", "max_over_refusal=1"], None, "'max_over_refusal'"),
        ("erase: bad flag value", [*JOB_CMDS["erase"], "--limit", "x"], None, "invalid int value"),
        ("erase: unknown flag", [*JOB_CMDS["erase"], "--frobnicate"], None, "unrecognized arguments"),
        ("erase: lr nan", [*JOB_CMDS["erase"], "--method", "sanitation-lora", "--set", "lr=nan"], None, "'lr'"),
        ("erase: lr <= 0", [*JOB_CMDS["erase"], "--method", "sanitation-lora", "--set", "lr=0"], None, "'lr'"),
        ("erase: rank 0", [*JOB_CMDS["erase"], "--method", "sanitation-lora", "--set", "rank=0"], None, "'rank'"),
        ("erase: dropout 1.5", [*JOB_CMDS["erase"], "--method", "sanitation-lora", "--set", "dropout=1.5"], None, "'dropout'"),
        ("erase: epochs -1", [*JOB_CMDS["erase"], "--method", "ft-m", "--set", "epochs=-1"], None, "'epochs'"),
        ("debias: components nan", ["debias", "--set", "components=nan"], None, "'components'"),
        ("debias: v_lr -1", ["debias", "--set", "v_lr=-1"], None, "'v_lr'"),
        ("debias: negative suite size", ["debias", "--winobias-limit", "-1"], None, "--winobias-limit -1"),
        ("detox: unknown combine", ["detox", "--set", "combine=nope"], None, "'combine'"),
        ("detox: top-p 0", ["detox", "--top-p", "0"], None, "--top-p 0"),
        ("eval: negative k", ["eval", "--suite", "rtp", "--k", "-1"], None, "--k -1"),
        ("eval: unknown retention task", ["eval", "--suite", "retention", "--retention", "nope"], None, "unknown task"),
        ("compare: missing run", ["compare", "nowhere"], None, "results.json"),
        ("patch: not a patch", ["patch", "show", "nowhere"], None, "not a trustedit patch folder"),
        ("data: unknown dataset", ["data", "fetch", "nope"], None, "nope"),
        ("ls: unknown listing", ["ls", "nope"], None, "invalid choice"),
        ("no command", [], None, None),
    ]
    return cases


@needs_data
def test_every_cli_error_is_one_line_without_a_traceback(tmp_path):
    real = os.path.abspath(os.environ["TRUSTEDIT_DATA_DIR"])
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "results.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"  # every bias / toxicity file the jobs read first, malformed
    for rel in ("dama/test_dama.json", "realtoxicityprompts/rtp_quark_val_5k.jsonl", "sanitation/knowedit/trivia_qa_train.json"):
        (bad / rel).parent.mkdir(parents=True, exist_ok=True)
        (bad / rel).write_text("{" if rel.endswith(".json") else "{\n")
    (bad / "sanitation/knowedit/trivia_qa_test.json").write_text("{}")
    dirs = {None: real, "empty": tmp_path / "empty", "bad": bad}
    cases = _cases(tmp_path)
    with ThreadPoolExecutor(2) as ex:
        outs = list(ex.map(lambda c: _cli(tmp_path, c[1], dirs[c[2]]), cases))
    failures = []
    for (name, args, _, needle), (rc, err) in zip(cases, outs):
        lines = err.strip().splitlines()
        ok = rc == 2 and "Traceback" not in err and (needle is None or (len(lines) == 1 and needle in lines[0]))
        if name == "no command":
            ok = rc == 2 and "Traceback" not in err
        if not ok:
            failures.append(f"{name}: rc={rc}, stderr={err.strip()[-400:]!r}")
    assert not failures, "\n".join(failures)
    assert json.loads((tmp_path / "exists" / "results.json").read_text()) == {}  # untouched
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".") and "tmp" in p], "temporary folder left behind"


@needs_data
def test_zero_means_the_whole_set_and_limit_caps_the_defaults():
    from trustedit.suites.base import LoadContext
    from trustedit.suites.retention import SUITE as RET, RetentionOptions
    from trustedit.suites.winobias import SUITE as WB, WinoBiasOptions

    all_wb = WB.load(WinoBiasOptions(winobias_limit=0), LoadContext(explicit=frozenset({"winobias_limit"})))
    assert len(all_wb.data["items"]) > 1000  # every test sentence, not none
    capped = RET.load(RetentionOptions(retention=["piqa", "wikitext"]), LoadContext(limit=5))
    assert len(capped.data["piqa"]) == 5 and len(capped.data["wikitext"]) == 1
    everything = RET.load(RetentionOptions(retention=["piqa"], retention_limit=0),
                          LoadContext(explicit=frozenset({"retention_limit"})))
    assert len(everything.data["piqa"]) > 1000


@needs_data
def test_standard_retention_size_and_explicit_sizes_win():
    """--retention-size standard loads the standard sizes (>= 20 WikiText-2 windows); an explicit
    --retention-limit or --wikitext-docs still wins; an unknown size is a usage error."""
    from trustedit.errors import UsageError
    from trustedit.suites.base import LoadContext
    from trustedit.suites.retention import SIZES, SUITE as RET, RetentionOptions

    std = SIZES["standard"]
    assert std["retention_limit"] > SIZES["default"]["retention_limit"]
    got = RET.load(RetentionOptions(retention=["piqa", "wikitext"], retention_size="standard"), LoadContext())
    assert len(got.data["piqa"]) == std["retention_limit"] and len(got.data["wikitext"]) == std["wikitext_docs"]
    both = RET.load(RetentionOptions(retention=["piqa", "wikitext"], retention_size="standard", retention_limit=7),
                    LoadContext(explicit=frozenset({"retention_limit"})))
    assert len(both.data["piqa"]) == 7 and len(both.data["wikitext"]) == std["wikitext_docs"]
    default = RET.load(RetentionOptions(retention=["piqa", "wikitext"]), LoadContext())
    assert len(default.data["piqa"]) == 30 and len(default.data["wikitext"]) == 1
    with pytest.raises(UsageError, match="--retention-size 'huge'"):
        RetentionOptions(retention_size="huge")
