"""The dataset source table and ``trustedit data ls|fetch|check``, offline.

Downloads go to a ThreadingHTTPServer on 127.0.0.1 (port 0) that serves a temporary folder; it
can also truncate a body (Content-Length larger than what it sends, then close) or stall. Most
tests swap in a toy source table whose files are created here; the CLI tests use the real table
with ``--mirror`` pointing at the local server. Tests marked by ``needs_data`` compare the real
table with ``$TRUSTEDIT_DATA_DIR`` (the shared copy).
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import pytest

from trustedit.data import fetch as F
from trustedit.data import paths, sources, transforms
from trustedit.data.sources import Dataset, File, Origin
from trustedit.errors import TrusteditError, UsageError

DATA_DIR = os.environ.get("TRUSTEDIT_DATA_DIR")
needs_data = pytest.mark.skipif(not (DATA_DIR and Path(DATA_DIR, "stereoset").is_dir()),
                                reason="needs $TRUSTEDIT_DATA_DIR (the shared data copy)")
REPO = Path(__file__).resolve().parents[1]
NAMES = ["sanitation", "triviaqa", "knowedit", "counterfact", "zsre", "enron_privacy", "dama", "winobias",
         "stereoset", "crows_pairs", "honest", "realtoxicityprompts", "jigsaw_toxic_nontoxic", "paradetox",
         "safeedit", "wikitext2", "piqa", "arc_easy", "hellaswag", "boolq", "mmlu", "commonsenseqa"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Every file under ``folder`` (hidden temporary files included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---- a local HTTP server ----------------------------------------------------------------------


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        mode = self.server.modes.get(unquote(self.path.split("?")[0]).lstrip("/"))
        self.server.hits.append(self.path)
        if mode in ("truncate", "stall"):
            body = (Path(self.directory) / unquote(self.path).lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000 if mode == "truncate" else len(body)))
            self.end_headers()
            if mode == "stall":
                time.sleep(1.5)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out or gave up: expected here


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    srv.modes, srv.hits = {}, []
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{srv.server_address[1]}", modes=srv.modes, hits=srv.hits)
    srv.shutdown()
    srv.server_close()


def put(folder: Path, relative: str, data: bytes) -> Path:
    p = folder / relative
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


# ---- a toy source table on the local server ---------------------------------------------------

ALPHA = "".join(f"alpha line {i}\n" for i in range(2000)).encode()  # > one read chunk is not needed; 26 kB
UPSTREAM_LIST = json.dumps([{"q": "Où?", "a": 1}, {"q": "b", "a": 2}, {"q": "c", "a": 3}], indent=2).encode()
DERIVED = b'{"q": "O\xc3\xb9?", "a": 1}\n{"q": "b", "a": 2}\n'  # json_list_to_jsonl(head=2) of UPSTREAM_LIST
SECRET = b"made by hand\n"


@pytest.fixture
def toy(server, monkeypatch, tmp_path):
    """Datasets ``toy`` (a copy and a derived file) and ``closed`` (no public origin), with the
    upstream files on the server under up/ and a mirror (a data root) under mirror/."""
    put(server.root, "up/alpha.txt", ALPHA)
    put(server.root, "up/list.json", UPSTREAM_LIST)
    for rel, data in (("toy/alpha.txt", ALPHA), ("toy/sub/list.jsonl", DERIVED), ("closed/secret.txt", SECRET)):
        put(server.root, f"mirror/{rel}", data)
    local = Origin(f"{server.url}/up/alpha.txt", "local:up/alpha.txt", "local test server")
    derived_origin = Origin(f"{server.url}/up/list.json", "local:up/list.json", "local test server")
    table = (
        Dataset("toy", "a copy and a derived file", "CC0", "nobody 2024", files=(
            File("toy/alpha.txt", len(ALPHA), sha(ALPHA), local),
            File("toy/sub/list.jsonl", len(DERIVED), sha(DERIVED), derived_origin, upstream_sha256=sha(UPSTREAM_LIST),
                 transform=(("json_list_to_jsonl", {"head": 2}),)),
        )),
        Dataset("closed", "no public origin", "none", "nobody", files=(
            File("closed/secret.txt", len(SECRET), sha(SECRET), reason="written by hand for this test"),
        )),
    )
    monkeypatch.setattr(sources, "DATASETS", table)
    monkeypatch.setattr(sources, "BY_NAME", {d.name: d for d in table})
    monkeypatch.delenv(F.MIRROR_ENV, raising=False)
    to = tmp_path / "root"
    return SimpleNamespace(to=to, server=server, mirror=f"{server.url}/mirror")


# ---- the real table ---------------------------------------------------------------------------


def test_table_lists_every_dataset_with_pinned_sources():
    assert [d.name for d in sources.DATASETS] == NAMES
    github = re.compile(r"^https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+$")
    for d in sources.DATASETS:
        assert d.description and d.license and d.citation and d.files, d.name
        for f in d.files:
            assert f.path.startswith(d.folder + "/") and f.size > 0 and re.fullmatch(r"[0-9a-f]{64}", f.sha256), f.path
            if f.origin is None:
                assert f.reason and not f.transform, f.path
                continue
            assert github.match(f.origin.url), f.origin.url
            assert f.derived == bool(f.upstream_sha256), f.path  # a transform always pins its input
            assert all(name in transforms.TRANSFORMS for name, _ in f.transform), f.path
    closed = [f.path for d in sources.DATASETS for f in d.files if f.origin is None]
    assert closed == ["enron_privacy/enron_emails_lay_skilling_3000.jsonl"]
    assert sources.hub("o/n", "a" * 40, "x y.json").url == f"https://huggingface.co/datasets/o/n/resolve/{'a' * 40}/x%20y.json"
    cf = sources.get("counterfact").files[4]
    assert cf.origin.url.endswith("/dataset/edit_data/portability/One%20Hop/counterfact_portability_gpt4.json")
    with pytest.raises(UsageError, match="unknown dataset 'nope'"):
        sources.select(["stereoset", "nope"])
    assert sources.dataset_of("winobias").name == "winobias" and sources.dataset_of("elsewhere/x") is None


@needs_data
def test_table_matches_the_shared_copy():
    rows = F.check(root=DATA_DIR)
    assert len(rows) == 88 and {r["status"] for r in rows} == {"ok"}, [r for r in rows if r["status"] != "ok"][:3]
    listed = {f.path for d in sources.DATASETS for f in d.files}
    on_disk = {str(p.relative_to(DATA_DIR)) for d in NAMES for p in Path(DATA_DIR, d).rglob("*") if p.is_file()}
    assert on_disk - listed == {f"{d}/PROVENANCE.md" for d in NAMES}  # documentation only
    sizes = {f.path: f.size for d in sources.DATASETS for f in d.files}
    assert all(Path(DATA_DIR, p).stat().st_size == n for p, n in sizes.items())


@needs_data
def test_triviaqa_transform_rebuilds_the_local_file_from_its_upstream():
    """triviaqa's upstream is sanitation/original/triviaqa_1/test_keep.json (same commit and
    SHA-256), which the shared copy holds, so this transform is checked on the real bytes."""
    f = sources.get("triviaqa").files[0]
    keep = sources.get("sanitation").files[6]
    assert keep.path.endswith("test_keep.json") and keep.sha256 == f.upstream_sha256
    out = transforms.apply(f.transform, Path(DATA_DIR, keep.path).read_bytes())
    assert sha(out) == f.sha256 and len(out) == f.size


# ---- transforms -------------------------------------------------------------------------------


def test_head_lines_is_head_n():
    assert transforms.head_lines(b"a\nb\r\nc\n", 2) == b"a\nb\r\n"
    assert transforms.head_lines(b"a\nb", 2) == b"a\nb"
    with pytest.raises(transforms.TransformError, match="at least 3 lines, got 2"):
        transforms.head_lines(b"a\nb\n", 3)


def test_json_transforms_keep_order_unicode_and_format():
    assert transforms.json_list_to_jsonl(UPSTREAM_LIST, head=2) == DERIVED
    assert transforms.json_list_to_jsonl(UPSTREAM_LIST).count(b"\n") == 3
    jsonl = b'{"a": "\xe2\x80\xa8x", "g": 1}\n{"a": "y", "g": 2}\n'  # U+2028 inside a string is not a line break
    assert transforms.jsonl_to_json_list(jsonl, drop=["g"]) == '[{"a": "\u2028x"}, {"a": "y"}]'.encode()
    keep = json.dumps([{"instruction": "", "input": "Who?", "output": "x", "output_gold": "Émile"}] * 3).encode()
    assert transforms.sanitation_to_triviaqa(keep, head=2) == (
        '{"idx": 0, "question": "Who?", "answer": "Émile"}\n{"idx": 1, "question": "Who?", "answer": "Émile"}\n').encode()
    with pytest.raises(transforms.TransformError, match="record 1, field 'output_gold': missing"):
        transforms.sanitation_to_triviaqa(json.dumps([{"input": "a", "output_gold": "b"}, {"input": "c"}]).encode())
    with pytest.raises(transforms.TransformError, match="expected a JSON list, got dict"):
        transforms.json_list_to_jsonl(b'{"a": 1}')


def test_boolq_from_edit_requests():
    rows = [{"prompt": "passage: Ethanol fuel -- All biomass -- goes.\nquestion: {}", "subject": "does it",
             "target_new": {"str": "False"}},
            {"prompt": "passage: T -- P\nquestion: {}", "subject": "is it", "target_new": {"str": "True"}}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    out = [json.loads(x) for x in transforms.boolq_from_edit_requests(data).decode().splitlines()]
    assert out[0] == {"idx": 0, "question": "does it", "title": "Ethanol fuel", "passage": "All biomass -- goes.",
                      "answer": False}
    assert out[1]["answer"] is True and len(transforms.boolq_from_edit_requests(data, head=1).splitlines()) == 1
    bad = json.dumps({"prompt": "passage: no separator\nquestion: {}", "subject": "s", "target_new": {"str": "True"}})
    with pytest.raises(transforms.TransformError, match="record 0, field 'prompt'"):
        transforms.boolq_from_edit_requests(bad.encode())


def test_hellaswag_text_pipeline():
    text = ("Roof shingle removal: A man is sitting on a roof. he\n3\nwraps.\nrips.\nholds.\npulls.\n"
            "Clean and jerk: A lady walks. the lady\n0\nswings.\npulls.\nropes.\nlifts.\n")
    steps = (("bz2_decompress", {}), ("hellaswag_text_to_jsonl", {"head": 1}))
    out = transforms.apply(steps, bz2.compress(text.encode()))
    assert json.loads(out) == {"ind": 0, "ctx": "Roof shingle removal: A man is sitting on a roof. he", "label": 3,
                               "endings": ["wraps.", "rips.", "holds.", "pulls."]}
    assert len(transforms.hellaswag_text_to_jsonl(text.encode()).splitlines()) == 2
    with pytest.raises(transforms.TransformError, match=r"^hellaswag_text_to_jsonl: task 1 \(line 8\): label 'x'"):
        transforms.apply((("hellaswag_text_to_jsonl", {}),), text.replace("\n0\n", "\nx\n").encode())
    with pytest.raises(transforms.TransformError, match="bz2_decompress: not a bzip2 stream"):
        transforms.apply(steps, b"plain")
    with pytest.raises(transforms.TransformError, match="unknown transform 'nope'"):
        transforms.apply((("nope", {}),), b"")
    assert transforms.describe(steps) == "bz2_decompress | hellaswag_text_to_jsonl(head=1)"


def test_arrow_stream_to_jsonl():
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"question": ["Q?"], "question_id": ["tc_1"], "extra": [1],
                      "answer": [{"aliases": ["Paris", "Paříž"], "value": "Paris"}]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    out = transforms.arrow_stream_to_jsonl(sink.getvalue().to_pybytes(), fields=["question", "answer"])
    assert out.decode() == '{"question": "Q?", "answer": {"aliases": ["Paris", "Paříž"], "value": "Paris"}}\n'


# ---- status / fetch / check with the toy table ------------------------------------------------


def test_status_reports_present_and_missing(toy):
    row = F.status(["toy"], root=toy.to)[0]
    assert not row["present"] and row["missing"] == ["toy/alpha.txt", "toy/sub/list.jsonl"]
    assert row["source"] == "local test server" and row["derived"] == ["toy/sub/list.jsonl"]
    assert row["fingerprint"] == paths.fingerprint([("alpha.txt", sha(ALPHA)), ("sub/list.jsonl", sha(DERIVED))])
    put(toy.to, "toy/alpha.txt", ALPHA)
    assert F.status(["toy"], root=toy.to)[0]["missing"] == ["toy/sub/list.jsonl"]
    closed = F.status(["closed"], root=toy.to)[0]
    assert closed["not_fetchable"] == "closed/secret.txt: written by hand for this test"


def test_fetch_lands_verified_files_and_skips_present_ones(toy):
    rows = F.fetch(["toy"], to=toy.to)
    assert [r["status"] for r in rows] == ["fetched", "fetched"]
    assert (toy.to / "toy/alpha.txt").read_bytes() == ALPHA and (toy.to / "toy/sub/list.jsonl").read_bytes() == DERIVED
    assert leftovers(toy.to) == ["toy/alpha.txt", "toy/sub/list.jsonl"]
    hits = len(toy.server.hits)
    assert [r["status"] for r in F.fetch(["toy"], to=toy.to)] == ["present", "present"]
    assert len(toy.server.hits) == hits  # nothing downloaded again


def test_corrupted_download_is_refused_and_leaves_nothing(toy):
    bad = ALPHA.replace(b"line 7\n", b"line X\n")
    put(toy.server.root, "up/alpha.txt", bad)
    with pytest.raises(F.FetchError) as e:
        F.fetch(["toy"], to=toy.to)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("toy/alpha.txt: sha256 mismatch")
    assert f"expected {sha(ALPHA)}" in msg and f"got {sha(bad)}" in msg
    assert leftovers(toy.to) == ["toy/sub/list.jsonl"]  # the good file landed, the bad one left nothing
    assert [r["status"] for r in e.value.results] == ["failed", "fetched"]
    # a derived file whose upstream changed: refused before the transform runs
    put(toy.server.root, "up/alpha.txt", ALPHA)
    put(toy.server.root, "up/list.json", UPSTREAM_LIST.replace(b'"b"', b'"B"'))
    (toy.to / "toy/sub/list.jsonl").unlink()
    with pytest.raises(F.FetchError, match=r"toy/sub/list\.jsonl: upstream file .*list\.json has sha256 .*changed upstream"):
        F.fetch(["toy"], to=toy.to)
    assert leftovers(toy.to) == ["toy/alpha.txt"]


def test_interrupted_download_leaves_nothing_and_a_rerun_fetches_it(toy):
    toy.server.modes["up/alpha.txt"] = "truncate"
    with pytest.raises(F.FetchError, match=rf"toy/alpha\.txt: download from .* interrupted after {len(ALPHA) // 2} "
                                           rf"of {len(ALPHA) + 1000} bytes"):
        F.fetch(["toy"], to=toy.to)
    assert leftovers(toy.to) == ["toy/sub/list.jsonl"]
    toy.server.modes.clear()
    assert [r["status"] for r in F.fetch(["toy"], to=toy.to)] == ["fetched", "present"]
    assert (toy.to / "toy/alpha.txt").read_bytes() == ALPHA


def test_timeout_and_http_errors_leave_nothing(toy):
    toy.server.modes["up/alpha.txt"] = "stall"
    with pytest.raises(F.FetchError, match=r"toy/alpha\.txt: download from .* failed \(timed out after 0.3 s\)"):
        F.fetch(["toy"], to=toy.to, timeout=0.3)
    (toy.to / "toy/sub/list.jsonl").unlink()
    (toy.to / "toy/sub").rmdir()
    (toy.server.root / "up/list.json").unlink()
    toy.server.modes.clear()
    with pytest.raises(F.FetchError, match=r"toy/sub/list\.jsonl: HTTP 404 .* from http://127\.0\.0\.1:\d+/up/list\.json"):
        F.fetch(["toy"], to=toy.to)
    assert leftovers(toy.to) == ["toy/alpha.txt"]
    assert not (toy.to / "toy/sub").exists()  # the folder made for the failed file is gone too


def test_a_different_present_file_is_not_replaced(toy):
    put(toy.to, "toy/alpha.txt", b"my own notes\n")
    with pytest.raises(F.FetchError, match=r"toy/alpha\.txt: already in .* with sha256 [0-9a-f]{64}, expected "
                                           r"[0-9a-f]{64}; not replaced"):
        F.fetch(["toy"], to=toy.to)
    assert (toy.to / "toy/alpha.txt").read_bytes() == b"my own notes\n"


def test_not_fetchable_files_and_mirrors(toy, monkeypatch):
    rows = F.fetch(to=toy.to)  # everything: the closed file is reported, not an error
    assert [r["status"] for r in rows] == ["fetched", "fetched", "not fetchable"]
    assert rows[2]["error"] == "closed/secret.txt: no public source: written by hand for this test"
    with pytest.raises(UsageError, match="closed/secret.txt: no public source: written by hand.*--mirror URL"):
        F.fetch(["closed"], to=toy.to)
    shutil.rmtree(toy.to)
    monkeypatch.setenv(F.MIRROR_ENV, toy.mirror)  # a data root over HTTP serves every file, the closed one too
    before = len(toy.server.hits)
    assert [r["status"] for r in F.fetch(to=toy.to)] == ["fetched"] * 3
    assert toy.server.hits[before:] == ["/mirror/toy/alpha.txt", "/mirror/toy/sub/list.jsonl", "/mirror/closed/secret.txt"]
    assert leftovers(toy.to) == ["closed/secret.txt", "toy/alpha.txt", "toy/sub/list.jsonl"]
    shutil.rmtree(toy.to)
    put(toy.server.root, "mirror/toy/alpha.txt", b"tampered\n")  # a mirror is verified like an origin
    with pytest.raises(F.FetchError, match="toy/alpha.txt: sha256 mismatch"):
        F.fetch(["toy"], to=toy.to, mirror=(toy.server.root / "mirror").as_uri())  # file:// works too
    assert leftovers(toy.to) == ["toy/sub/list.jsonl"]
    with pytest.raises(UsageError, match="mirror 'ftp://x': expected an http://, https:// or file:// URL"):
        F.fetch(["toy"], to=toy.to, mirror="ftp://x")


def test_check_reports_ok_mismatch_and_missing(toy):
    F.fetch(["toy"], to=toy.to)
    assert [r["status"] for r in F.check(root=toy.to)] == ["ok", "ok", "missing"]
    p = toy.to / "toy/alpha.txt"
    data = bytearray(p.read_bytes())
    data[100] ^= 1
    p.write_bytes(bytes(data))
    rows = F.check(["toy"], root=toy.to)
    assert [r["status"] for r in rows] == ["mismatch", "ok"] and rows[0]["actual"] == sha(bytes(data))


# ---- the data root and the missing-data error -------------------------------------------------


def test_data_root_order(tmp_path, monkeypatch):
    default = tmp_path / "cache" / "data"
    monkeypatch.setattr(paths, "default_root", lambda: default)
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    assert paths.find("stereoset/stereoset_dev.jsonl") is None
    put(default, "stereoset/stereoset_dev.jsonl", b"{}\n")
    assert paths.find("stereoset/stereoset_dev.jsonl") == default / "stereoset/stereoset_dev.jsonl"
    assert paths.data_root() == default and paths.root_label("x") == f"{default}/x"
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv(paths.ENV_VAR, str(env))  # set: the only place looked at
    assert paths.find("stereoset/stereoset_dev.jsonl") is None and paths.root_label("x") == "$TRUSTEDIT_DATA_DIR/x"
    put(env, "stereoset/stereoset_dev.jsonl", b"{}\n")
    assert paths.require("stereoset/stereoset_dev.jsonl") == env / "stereoset/stereoset_dev.jsonl"


def test_default_root_follows_the_cache_variables(tmp_path):
    code = "from trustedit.data.paths import data_root; print(data_root())"
    env = {k: v for k, v in os.environ.items() if k not in ("TRUSTEDIT_DATA_DIR", "TRUSTEDIT_CACHE")}
    env.update(PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    run = functools.partial(subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run(env=env).stdout.strip() == str(tmp_path / "xdg" / "trustedit" / "data")
    assert run(env={**env, "TRUSTEDIT_CACHE": str(tmp_path / "tc")}).stdout.strip() == str(tmp_path / "tc" / "data")


def test_loader_error_names_the_dataset_and_the_fetch_command(tmp_path, monkeypatch):
    from trustedit.data.bias import load_stereoset, load_winobias

    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    with pytest.raises(TrusteditError) as e:
        load_stereoset()
    assert str(e.value) == (f"data file 'stereoset/stereoset_dev.jsonl' not found in $TRUSTEDIT_DATA_DIR={tmp_path} "
                            "(dataset 'stereoset'): run 'trustedit data fetch stereoset', or set $TRUSTEDIT_DATA_DIR "
                            "to a folder that holds it")
    with pytest.raises(TrusteditError, match=r"^data folder 'winobias' not found .*\(dataset 'winobias'\): run "
                                             r"'trustedit data fetch winobias'"):
        load_winobias()
    msg = paths.missing_message("enron_privacy/enron_emails_lay_skilling_3000.jsonl")
    assert "(dataset 'enron_privacy', not publicly downloadable: selected by a script" in msg and "\n" not in msg
    assert "--mirror URL" in msg
    assert paths.missing_message("elsewhere/x.json").endswith("not found in $TRUSTEDIT_DATA_DIR="
                                                              f"{tmp_path}: set $TRUSTEDIT_DATA_DIR to a folder that holds it")


# ---- the command line, as a separate process ---------------------------------------------------

WRAP = ("import atexit, runpy, sys; "
        "atexit.register(lambda: print('\\nTORCH_IMPORTED=' + str('torch' in sys.modules))); "
        "runpy.run_module('trustedit', run_name='__main__', alter_sys=True)")


def cli(tmp_path, data_dir, *args):
    """``python -m trustedit data ARGS`` with $TRUSTEDIT_DATA_DIR=data_dir; (rc, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != F.MIRROR_ENV}
    env.update(PYTHONPATH=str(REPO), TRUSTEDIT_DATA_DIR=str(data_dir), TRUSTEDIT_CACHE=str(tmp_path / "cache"),
               TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", WRAP, "data", *args], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=120)
    out, _, marker = p.stdout.rpartition("\nTORCH_IMPORTED=")
    assert marker.strip() == "False", "trustedit data imported torch"
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, out, p.stderr


def one_line(rc, err) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("trustedit: error: "), (rc, err)
    return lines[0]


def test_cli_errors_are_one_line_with_exit_2(tmp_path, server):
    root = tmp_path / "root"
    root.mkdir()
    rc, out, err = cli(tmp_path, root, "ls")
    assert rc == 0 and f"data root: {root} ($TRUSTEDIT_DATA_DIR)" in out and "0 of 22 datasets present" in out
    assert re.search(r"^stereoset +missing +0/2 +files", out, re.M)
    assert "unknown dataset 'nope'" in one_line(*cli(tmp_path, root, "fetch", "nope")[::2])
    put(server.root, "stereoset/stereoset_dev.jsonl", b'{"not": "stereoset"}\n')
    put(server.root, "stereoset/LICENSE_StereoSet_CC-BY-SA-4.0.md", b"not the licence\n")
    rc, out, err = cli(tmp_path, root, "fetch", "stereoset", "--mirror", server.url)
    line = one_line(rc, err)
    assert "stereoset/LICENSE_StereoSet_CC-BY-SA-4.0.md: sha256 mismatch: expected" in line and "(2 of 2 files failed)" in line
    assert out.count("failed ") == 2 and leftovers(root) == []
    assert "enron_privacy/enron_emails_lay_skilling_3000.jsonl: no public source: selected by a script" in one_line(
        *cli(tmp_path, root, "fetch", "enron_privacy")[::2])
    rc, out, err = cli(tmp_path, root / "not-yet", "ls", "dama")
    assert rc == 0 and f"data root: {root / 'not-yet'} ($TRUSTEDIT_DATA_DIR; not there yet)" in out
    rc, out, err = cli(tmp_path, root, "check")
    assert rc == 0 and "0 file(s) ok, 88 missing, 0 mismatched" in out and "trustedit data fetch stereoset" in out


@needs_data
def test_cli_fetch_ls_check_from_a_mirror_of_real_files(tmp_path, server):
    names = ["winobias", "dama", "piqa"]
    for n in names:
        shutil.copytree(Path(DATA_DIR, n), server.root / n)
    root = tmp_path / "root"
    root.mkdir()
    rc, out, err = cli(tmp_path, root, "fetch", *names, "--mirror", server.url)
    assert rc == 0, err
    assert out.count("fetched ") == 19 and "19 file(s) fetched, 0 already present" in out
    rc, out, _ = cli(tmp_path, root, "fetch", *names, "--mirror", server.url)
    assert rc == 0 and "0 file(s) fetched, 19 already present" in out
    rc, out, _ = cli(tmp_path, root, "ls", *names)
    assert rc == 0 and len(re.findall(r"^\w+ +present ", out, re.M)) == 3 and "3 of 3 datasets present" in out
    rc, out, _ = cli(tmp_path, root, "check", *names)
    assert rc == 0 and "19 file(s) ok, 0 missing, 0 mismatched" in out
    p = root / "dama" / "professions.json"
    data = bytearray(p.read_bytes())
    data[10] ^= 1
    p.write_bytes(bytes(data))
    rc, out, err = cli(tmp_path, root, "check")
    assert re.search(r"dama/professions\.json: sha256 [0-9a-f]{64} differs from the recorded [0-9a-f]{64}$",
                     one_line(rc, err))
    assert "mismatch  dama/professions.json" in out and "18 file(s) ok, 69 missing, 1 mismatched" in out
