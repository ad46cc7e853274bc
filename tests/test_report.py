"""summary.md and the side-by-side comparison are built from results.json alone."""

import json
import subprocess
import sys

from trustedit.metrics.scores import Score, compare
from trustedit.report import compare_runs, erase_summary


def _results(method, post_ks, fp="sha256:abc"):
    pre, post = Score("K_S_idk_rate", "p", [0, 0, 0, 0]), Score("K_S_idk_rate", "p", post_ks)
    loc0, loc1 = Score("locality", "q", [1, 1, 1, 1]), Score("locality", "q", [1, 0.5, 1, 1])
    return {
        "method": {"name": method, "config": {"lr": 1}, "summary": "s", "citation": "c"},
        "dataset": {"name": "sanitation", "fingerprint": fp, "counts": {"test_forget": 4, "test_retain": 4, "train_forget": 1,
                    "train_retain": 1}, "known_only": None, "source": "x", "layout": "knowedit", "forgotten_answers": ["Paris"]},
        "model": {"fingerprint": "gguf-sha256:0", "spec": "m", "model_type": "llama", "num_parameters": 1e6, "dtype": "float32",
                  "device": "cpu"},
        "metrics": {"K_S_idk_rate": compare(pre, post), "locality": compare(loc0, loc1)},
        "timings_s": {"total": 3.0, "edit": 1.0},
    }


def test_compare_runs_table():
    out = compare_runs([("a", _results("ft-m", [1, 1, 0, 0])), ("b", _results("sanitation-lora", [1, 1, 1, 1]))])
    assert "| K_S_idk_rate (%) | 0.0 → 50.0 (50.0) | 0.0 → 100.0 (100.0) |" in out
    assert "| locality (%) | 100.0 → 87.5 (-12.5) | 100.0 → 87.5 (-12.5) |" in out
    assert "Warning" not in out
    assert "Warning" in compare_runs([("a", _results("ft-m", [1, 1, 0, 0])), ("b", _results("ft-m", [1, 1, 0, 0], fp="sha256:x"))])


def test_summary_names_protocol_and_interval():
    s = erase_summary(_results("ft-m", [1, 1, 0, 0]))
    assert "K_S_idk_rate (%) ↑ | 0.0 | 50.0 |" in s and "| p |" in s


def test_compare_cli(tmp_path):
    for name, ks in (("r1", [1, 0, 0, 0]), ("r2", [1, 1, 1, 0])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_results("ft-m", ks)))
    r = subprocess.run([sys.executable, "-m", "trustedit", "compare", str(tmp_path / "r1"), str(tmp_path / "r2"),
                        "--out", str(tmp_path / "cmp.md")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "25.0" in (tmp_path / "cmp.md").read_text() and "75.0" in r.stdout
    r = subprocess.run([sys.executable, "-m", "trustedit", "compare", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "results.json" in r.stderr


def test_bias_scores_already_in_percent_are_not_scaled_again():
    from trustedit.report import is_fraction

    m = {"aggregation": "mean", "pre": {}}
    assert is_fraction("piqa/acc", m) and is_fraction("K_S_idk_rate", m)
    for name in ("stereoset/icat", "stereoset/gender/ss", "crows_pairs/metric", "winobias_dama/delta_s", "dama_gender/a_s",
                 "fluency_ngram_entropy"):
        assert not is_fraction(name, m), name
    assert not is_fraction("x", {"aggregation": "mean", "pre": {"unit": "%"}})
    assert not is_fraction("wikitext/ppl", {"aggregation": "ppl", "pre": {}})
