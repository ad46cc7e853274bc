"""The HTML + Markdown audit report (trustedit.htmlreport, `trustedit report`): rendered from saved
results alone (schema v1 and the audit keys), self-contained (no external references), every
section present, PII masked, deterministic; and, when a Chromium binary is there, really drawn by a
headless browser."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from trustedit import htmlreport as H
from trustedit.metrics.scores import Score, entry

PII_EMAIL = "jane.doe@example.com"
PII_PHONE = "+1 415 555 0134"


def _s(name, values, **kw):
    kw.setdefault("unit", "fraction")
    kw.setdefault("display", "percent")
    return Score(name, f"protocol of {name}: greedy decoding, 16 new tokens", values, **kw)


def _m(name, pre, post=None, **kw):
    return entry(_s(name, pre, **kw), None if post is None else _s(name, post, **kw))


def _ppl(pre, post=None):
    kw = dict(aggregation="ppl", higher_is_better=False, unit="perplexity (tokens)", display="raw")
    w = [100.0] * len(pre)
    a = Score("wikitext/ppl", "token-level perplexity", pre, weights=w, **kw)
    return entry(a, None if post is None else Score("wikitext/ppl", "token-level perplexity", post, weights=w, **kw))


def _suite_sec(fp="sha256:" + "ab" * 32, **extra):
    return {"summary": "s", "citation": "c", "options": {}, "cache": {"state": "off"},
            "dataset": {"fingerprint": fp, "n": 8}, **extra}


def _base(task, protocol, method, metrics, **extra):
    r = {
        "schema_version": 1, "trustedit_version": "0.1.0", "task": task, "created": "2026-01-02T03:04:05+0000",
        "argv": ["trustedit", task],
        "versions": {"python": "3.11", "trustedit": "0.1.0", "torch": "2.13", "transformers": "5",
                     "trustedit_git": "abc1234"},
        "method": None if method is None else {"name": method, "config": {"lr": 0.1}, "summary": "an edit",
                                               "citation": "Someone 2024"},
        "protocol": protocol,
        "model": {"spec": "tiny-model", "fingerprint": "gguf-sha256:" + "0f" * 32, "model_type": "llama",
                  "num_parameters": 1e6, "dtype": "float32", "device": "cpu"},
        "suites": {s: _suite_sec() for s in metrics},
        "evaluation": {"batch_size": 16, "limit": None, "eval_cache": True},
        "seeds": {"seed": 0, "bootstrap_seed": 0, "bootstrap_resamples": 1000},
        "metrics": metrics, "timings_s": {"total": 12.0, "edit": 3.0}, "peak_memory_mb": {},
    }
    r.update(extra)
    return r


def whole_edit():
    metrics = {
        "sanitation": {"K_S_idk_rate": _m("K_S_idk_rate", [0, 0, 0, 0, 1, 0, 0, 0], [1, 1, 1, 0, 1, 1, 0, 1]),
                       "K_R_retain_accuracy": _m("K_R_retain_accuracy", [1, 1, 0, 1, 1, 1, 0, 1],
                                                 [1, 1, 0, 1, 1, 0, 0, 1])},
        "retention": {"wikitext/ppl": _ppl([300.0, 280.0, 310.0], [305.0, 290.0, 312.0])},
    }
    r = _base("erase", "whole", "ft-m", metrics, patch={"path": "patch", "method": "ft-m", "training": {"steps": 4}})
    samples = [{"suite": "sanitation", "split": "test_forget", "question": f"Who wrote Hamlet? Mail {PII_EMAIL}",
                "gold": "Shakespeare", "pre": f"Shakespeare; call {PII_PHONE}", "post": "I don't know."},
               {"suite": "sanitation", "split": "test_forget", "question": "Long one?", "gold": "x",
                "pre": "word " * 200, "post": {"text": "<b>not bold</b>", "score": 0.25}}]
    return r, samples


def eval_run():
    metrics = {"rtp": {"toxic/expected_max_toxicity": _m("toxic/expected_max_toxicity", [0.1, 0.5, 0.9, 0.2],
                                                         higher_is_better=False)}}
    samples = [{"suite": "rtp", "set": "toxic", "id": "1", "prompt": "So I said",
                "pre": [{"text": " hello there", "score": 0.01}, {"text": " something else", "score": 0.4}]}]
    return _base("eval", "none", None, metrics), samples


def sweep_run():
    kw = dict(unit="p(he) - p(she) per unit score", display="coefficient", higher_is_better=False, ideal=0.0)
    base = {"dama-gender": {"a_s": _m("a_s", [0.1, 0.2, 0.05, 0.15], **kw)},
            "retention": {"wikitext/ppl": _ppl([300.0, 280.0, 310.0])}}
    points = []
    for lab, a, p in (("0.8:0.9 d_c=2", [0.05, 0.1, 0.0, 0.05], [305.0, 282.0, 311.0]),
                      ("0.8:0.9 d_c=8", [0.0, 0.05, 0.0, 0.0], [320.0, 300.0, 330.0])):
        points.append({"label": lab, "method": "dama", "config": {"components": 2}, "training": {},
                       "seconds": {"fit": 1.0, "eval": 2.0},
                       "metrics": {"dama-gender": {"a_s": _m("a_s", [0.1, 0.2, 0.05, 0.15], a, **kw)},
                                   "retention": {"wikitext/ppl": _ppl([300.0, 280.0, 310.0], p)}}})
    return _base("debias-sweep", "sweep", "dama", base, points=points), []


def sequential_run():
    pre = [0, 1, 0, 0, 1]
    post = [1, 1, 1, 0, 1]
    metrics = {"safeedit": {"DS": _m("DS", pre, post)}}
    edits = [{"item": i, "training": {"layer": 3}, "seconds": {"fit": 1.0, "post_eval": 1.0}} for i in range(5)]
    samples = [{"suite": "safeedit", "id": i, "category": "illegal activities",
                "pre": {"DS": {"response": f"Sure, here is how (item {i})", "verdict": float(pre[i])}},
                "post": {"DS": {"response": "I'm sorry, I can't help with that.", "verdict": float(post[i])}},
                "edit": {"item": i, "training": {"layer": 3}}} for i in range(5)]
    return _base("detox", "sequential", "dinm", metrics, edits=edits,
                 patch={"path": "patch", "method": "dinm", "training": {"edits": 5}}), samples


def audit_run():
    kw = dict(unit="p(he) - p(she) per unit score", display="coefficient", higher_is_better=False, ideal=0.0)
    metrics = {"dama-gender": {"a_s": _m("a_s", [0.1, 0.2, 0.05, 0.15], [0.02, 0.05, 0.0, 0.03], **kw)},
               "rtp": {"toxic/expected_max_toxicity": _m("toxic/expected_max_toxicity", [0.5, 0.6, 0.4, 0.5],
                                                         [0.3, 0.4, 0.3, 0.3], higher_is_better=False)},
               "retention": {"wikitext/ppl": _ppl([300.0, 280.0, 310.0], [303.0, 284.0, 312.0])}}
    heads = {"dama": "dama-gender/a_s", "ext-sub": "rtp/toxic/expected_max_toxicity"}
    patches = [{"label": "dama", "path": "runs/debias/patch", "method": "dama", "digest": "1" * 64,
                "base_model": {"spec": "tiny-model", "fingerprint": "gguf-sha256:" + "0f" * 32},
                "training": {"layers": [2, 3]}, "headline": heads["dama"]},
               {"label": "ext-sub", "path": "runs/detox/patch", "method": "ext-sub", "digest": "2" * 64,
                "base_model": {"spec": "tiny-model", "fingerprint": "gguf-sha256:" + "0f" * 32},
                "training": {"steps": 10}, "headline": heads["ext-sub"]}]
    configs = [{"label": "dama", "patches": [0], "metrics": {}}, {"label": "ext-sub", "patches": [1], "metrics": {}},
               {"label": "dama+ext-sub", "patches": [0, 1], "metrics": {}}]
    rows = [
        {"config": "dama", "patches": [0], "effects": {
            "dama": {"metric": heads["dama"], "effect": 0.1, "ci95": [0.05, 0.15], "in_config": True, "retained": 1.0},
            "ext-sub": {"metric": heads["ext-sub"], "effect": 0.01, "ci95": [-0.02, 0.04], "in_config": False,
                        "retained": None}}},
        {"config": "ext-sub", "patches": [1], "effects": {
            "ext-sub": {"metric": heads["ext-sub"], "effect": 0.2, "ci95": [0.1, 0.3], "in_config": True,
                        "retained": 1.0}}},
        {"config": "dama+ext-sub", "patches": [0, 1], "effects": {
            "dama": {"metric": heads["dama"], "effect": 0.093, "ci95": [0.04, 0.14], "in_config": True,
                     "retained": 0.93},
            "ext-sub": {"metric": heads["ext-sub"], "effect": 0.15, "ci95": [0.05, 0.25], "in_config": True,
                        "retained": 0.75}}},
    ]
    relapse = [{"patch": "dama", "headline": heads["dama"], "effect": {"value": 0.1, "ci95": [0.05, 0.15]},
                "conditions": {
                    "int8": {"effect": {"value": 0.098, "ci95": [0.05, 0.14]}, "relapse": {"value": 0.02,
                                                                                           "ci95": [-0.1, 0.15]},
                             "base": 0.125, "edited": 0.027},
                    "finetune": {"steps": 20, "effect": {"value": 0.04, "ci95": [0.0, 0.08]},
                                 "relapse": {"value": 0.6, "ci95": [0.3, 0.9]}, "base": 0.125, "edited": 0.085}}}]
    r = _base("audit", "audit", None, metrics, patches=patches, configs=configs,
              interference={"headline": heads, "rows": rows}, relapse=relapse)
    return r, []


def _render(*runs, rules=None):
    return H.render([(f"run{i}", r, s) for i, (r, s) in enumerate(runs)], rules=rules)


# ---- fixtures are valid results --------------------------------------------------------------------


@pytest.mark.parametrize("make", [whole_edit, eval_run, sweep_run, sequential_run])
def test_fixtures_are_schema_v1(make):
    from trustedit.results import validate

    validate(make()[0])


def test_audit_fixture_is_schema_v1():
    import jsonschema

    from trustedit.results import validate

    r = audit_run()[0]
    try:
        validate(r)
    except jsonschema.ValidationError as e:
        # The audit keys (task/protocol "audit", patches, configs, interference, relapse) are being added to
        # results_schema.json separately; until then only they may be what the schema rejects.
        path = list(e.absolute_path)
        if path[:1] in (["protocol"], ["patches"], ["configs"], ["interference"], ["relapse"]):
            pytest.skip(f"results_schema.json does not allow the audit keys yet ({'/'.join(map(str, path))})")
        raise


# ---- contents ------------------------------------------------------------------------------------


EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*(?!["']?#)""", re.I)


def _self_contained(html: str) -> None:
    assert not EXTERNAL.search(html), EXTERNAL.search(html)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    assert not re.search(r"url\((?!#)", html)  # only the SVGs' own clip paths


def test_whole_edit_sections_and_masking():
    html, md = _render(whole_edit())
    _self_contained(html)
    for section in ("Executive summary", "Per-suite results", "Plots", "Examples of generations before and after",
                    "Provenance"):
        assert section in html and section in md
    # lights of the four areas, from the packaged rules
    for area in H.AREAS:
        assert area in html and f"| {area} |" in md
    assert "Audit" not in md.split("## Provenance")[0].split("## Per-suite")[0]
    # the per-suite table: before / after / delta [CI] / n / protocol with the protocol in full underneath
    assert "K_S_idk_rate" in html and "delta [95% CI]" in html and "protocol of K_S_idk_rate: greedy decoding" in html
    assert "| K\\_S\\_idk\\_rate (%) ↑ | 12.5 | 75.0 |" in md
    assert html.count("<svg") == 2  # before/after bars: sanitation, retention
    # PII masked in the examples even though the samples were not; long texts cut; HTML escaped
    for text in (html, md):
        assert PII_EMAIL not in text and "jane.doe" not in text and PII_PHONE not in text and "555 0134" not in text
    assert "Who wrote Hamlet?" in html and "Shakespeare" in html
    assert "word " * 80 not in html and "…" in html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html
    # provenance: git revision, versions, argv, seeds
    assert "abc1234" in html and "bootstrap_resamples 1000" in html and "trustedit erase" in html


def test_git_revision_unknown_when_absent():
    r, s = whole_edit()
    del r["versions"]["trustedit_git"]
    html, md = _render((r, s))
    assert "git revision unknown" in html and "git revision unknown" in md


def test_eval_run_values_and_list_generations():
    html, md = _render(eval_run())
    _self_contained(html)
    assert "value [95% CI]" in md and "| n | protocol |" in md
    assert "hello there" in html and "first of 2" in html and "something else" not in html
    assert "none: an evaluation of the base model" in html


def test_sweep_tradeoff_plot():
    html, md = _render(sweep_run())
    _self_contained(html)
    assert "Trade-off curves (sweep)" in html and "Trade-off curves (sweep)" in md
    assert "Sweep points" in html and "0.8:0.9 d_c=8" in html
    assert html.count("<svg") == 3  # bars x2 + trade-off


def test_sequential_edit_curve():
    html, md = _render(sequential_run())
    assert "sequential edits: safeedit/DS over the edit index" in html
    assert "Sure, here is how" in html and "I&#39;m sorry" in html  # the DS response of each side
    r, s = sequential_run()
    for row in s:
        del row["post"]["DS"]["verdict"]
    html, md = _render((r, s))
    assert "sequential-edit curve is skipped" in html and "sequential-edit curve is skipped" in md


def test_audit_sections():
    html, md = _render(audit_run())
    _self_contained(html)
    for section in ("Patches, in the order applied", "Interference matrix", "Relapse", "Interference heat-map"):
        assert section in html and section in md
    # patches in order with their digest; the interference cells; "–" with the other edits' movement
    assert md.index("runs/debias/patch") < md.index("runs/detox/patch")
    assert "0.0930 [0.0400, 0.1400] (93% retained)" in html
    assert "– (moved 1.0 [-2.0, 4.0] by the other edits)" in html
    rows = [line for line in md.splitlines() if line.startswith("| ext-sub |")]
    assert rows and rows[0].split("|")[2].strip() == "–"  # dama is not in the ext-sub config, no movement given
    # relapse: the condition with its steps, the relapse as a share with its interval
    assert "finetune (20 steps)" in html and "60% [30%, 90%]" in html and "largely undone" in html
    assert "int8" in html and "2% [-10%, 15%]" in html and "robust" in html


def test_several_runs_side_by_side():
    html, md = _render(whole_edit(), audit_run(), sequential_run())
    _self_contained(html)
    assert "3 runs side by side" in html and "Side by side" in md
    head = next(line for line in md.splitlines() if line.startswith("| suite/metric |"))
    assert head == "| suite/metric | run0: ft-m | run1: audit | run2: dinm |"
    assert md.index("\n## Side by side") < md.index("\n## run0:")  # before the per-run details
    for i, label in enumerate(("run0", "run1", "run2")):
        assert f'id="run-{i + 1}-{label}"' in html and f"\n## {label}:" in md
    assert md.count("### Provenance") == 3


def test_deterministic():
    a = _render(whole_edit(), sweep_run())
    b = _render(whole_edit(), sweep_run())
    assert a == b


def test_explicit_rules(tmp_path):
    gate = pytest.importorskip("trustedit.gate")
    rules = tmp_path / "gates.yaml"
    rules.write_text("version: 1\nrules:\n  - rule: \"sanitation.K_S_idk_rate >= 0.9\"\n    name: forget most\n"
                     "  - rule: \"rtp.toxic/expected_max_toxicity <= 0.3\"\n    name: not toxic\n")
    html, md = _render(whole_edit(), rules=rules)
    assert "forget most" in md and "❌ fail" in md and "the rules in" in md
    # a rule whose suite the run lacks is left out, and the page says so
    assert "not toxic" not in md.split("## Per-suite")[0].split("Note:")[0] and "left out" in md
    assert all(o.rule.source for o in gate.evaluate(whole_edit()[0], gate.load_rules(rules), missing="skip"))


# ---- the command ---------------------------------------------------------------------------------


def _write_run(folder: Path, results: dict, samples: list) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return folder


def _cli(*args, cwd=None):
    code = ("import sys\nfrom trustedit.cli import main\nrc = main(sys.argv[1:])\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\nsys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_cli_report(tmp_path):
    one = _write_run(tmp_path / "one", *whole_edit())
    two = _write_run(tmp_path / "two", *sequential_run())
    r = _cli("report", one)
    assert r.returncode == 0, r.stderr
    assert "NO-TORCH" in r.stderr  # rendered from saved results: torch never imported
    html = (one / "report.html").read_text()
    assert "<svg" in html and "Executive summary" in (one / "report.md").read_text()
    # an existing output is refused without --overwrite: one line, exit 2, nothing touched
    (one / "report.html").write_text("old")
    r = _cli("report", one)
    lines = [x for x in r.stderr.splitlines() if x not in ("TORCH", "NO-TORCH")]
    assert r.returncode == 2 and len(lines) == 1 and "already exists" in lines[0]
    assert (one / "report.html").read_text() == "old"
    assert _cli("report", one, "--overwrite").returncode == 0 and "<svg" in (one / "report.html").read_text()
    # several runs need --out
    r = _cli("report", one, two)
    lines = [x for x in r.stderr.splitlines() if x not in ("TORCH", "NO-TORCH")]
    assert r.returncode == 2 and len(lines) == 1 and "--out" in lines[0]
    out = tmp_path / "both.html"
    r = _cli("report", one, two, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "2 runs side by side" in out.read_text() and out.with_suffix(".md").is_file()
    assert not list(tmp_path.glob(".both.*"))  # no temporary files left
    # a missing run: one line, exit 2, nothing written
    r = _cli("report", tmp_path / "nope", "--out", tmp_path / "x.html")
    lines = [x for x in r.stderr.splitlines() if x not in ("TORCH", "NO-TORCH")]
    assert r.returncode == 2 and len(lines) == 1 and not (tmp_path / "x.html").exists()
    r = _cli("report", one, "--out", tmp_path / "x.txt")
    assert r.returncode == 2 and ".html" in r.stderr


def test_write_is_atomic(tmp_path, monkeypatch):
    r, s = whole_edit()
    out = tmp_path / "r.html"

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(H.os, "replace", boom)
    with pytest.raises(Exception):
        H.write(out, [("a", r, s)])
    assert list(tmp_path.iterdir()) == []


# ---- a real browser ------------------------------------------------------------------------------


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _png_rows(path: Path):
    """Width, height and the raw RGB(A) rows of an 8-bit PNG (no interlacing), decoded with zlib."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", None
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def test_headless_browser_renders_the_report(tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium binary (chromium, chromium-browser or google-chrome) on PATH: the headless-browser "
                    "check of the HTML report cannot run here")
    html_path, _ = H.write(tmp_path / "report.html", [("edit", *whole_edit()), ("audit", *audit_run())])
    png = tmp_path / "shot.png"
    base = ["nice", "-n", "19", chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--no-default-browser-check", f"--user-data-dir={tmp_path / 'profile'}"]
    r = subprocess.run(base + ["--window-size=1280,3000", f"--screenshot={png}", html_path.as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert png.is_file(), r.stderr[-2000:]
    assert png.stat().st_size > 20_000
    width, height, bpp, rows = _png_rows(png)
    assert (width, height) == (1280, 3000)
    colours = set()
    for y in range(0, height, 50):
        row = rows[y]
        colours.update(row[x:x + 3] for x in range(0, width * bpp, bpp * 7))
    assert len(colours) > 20  # text, tables, lights and plots: far from one colour
    dom = subprocess.run(base + ["--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table") >= 5 and "<svg" in dom.stdout and "Executive summary" in dom.stdout
    assert "Interference matrix" in dom.stdout
