"""The wheel installs the side folders as trustedit.* and the CLI starts without torch."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("trustedit-*.whl")
    return whl


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("safety", "bias", "privacy", "benchmarks"):
        assert f"trustedit/{pkg}/__init__.py" in names
        assert f"{pkg}/__init__.py" not in names  # never a top-level package
    assert "trustedit/privacy/sanitization.py" in names
    assert "trustedit/data/starter/sanitation_train.json" in names
    for name in ("crows_pairs", "stereoset", "winobias", "rtp_toxicity", "sanitation"):
        assert f"trustedit/evaluate_modules/{name}/{name}.py" in names  # evaluate.load(trustedit.evaluate_module(name))
    for f in ("piqa.yaml", "mmlu_marketing.yaml", "_mmlu_template_yaml", "utils.py"):  # the lm-eval cross-check's tasks
        assert f"trustedit/benchmarks/lm_eval_tasks/{f}" in names


def test_wheel_in_fresh_venv_runs_help(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # torch is not installed in this venv: --help must not need it.
    r = subprocess.run([str(env_dir / "bin" / "trustedit"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "erase" in r.stdout
    r = subprocess.run([str(py), "-c", "import trustedit.privacy, trustedit.bias, trustedit.safety, trustedit.benchmarks; "
                        "import trustedit.privacy as p; print(p.__file__)"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(env_dir) in r.stdout
    r = subprocess.run([str(py), "-c", "import os, trustedit; print(all(os.path.isfile(os.path.join(trustedit.evaluate_module(n), "
                        "n + '.py')) for n in trustedit.EVALUATE_MODULES))"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr
