"""Run directories: an unusable --out is found before any work, nothing is left behind by a
failed or killed run, and an existing target is replaced atomically."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trustedit import rundir
from trustedit.errors import UsageError


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_dir_writes_and_replaces(tmp_path):
    out = tmp_path / "run"
    with rundir.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert tmp.parent == tmp_path and tmp.name.startswith(".run.tmp-")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(UsageError, match="already exists and is not empty"):
        rundir.check_target(out)
    with rundir.atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert _hidden(tmp_path) == []


def test_failure_removes_temp_and_the_parents_it_made(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    rundir.check_target(out)
    assert not (tmp_path / "a").exists(), "check_target created folders"
    with pytest.raises(RuntimeError):
        with rundir.atomic_dir(out) as tmp:
            (tmp / "partial.txt").write_text("x")
            assert (tmp_path / "a" / "b").is_dir()
            raise RuntimeError("the run failed")
    assert list(tmp_path.iterdir()) == [], "left folders behind"
    with pytest.raises(KeyboardInterrupt):
        with rundir.atomic_dir(out):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    # parents that existed before stay; a successful run keeps the ones it made
    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError):
        with rundir.atomic_dir(out):
            raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and list((tmp_path / "a").iterdir()) == []
    with rundir.atomic_dir(out) as tmp:
        (tmp / "ok").write_text("")
    assert (out / "ok").is_file()


def test_out_is_a_file(tmp_path):
    f = tmp_path / "results"
    f.write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="is a file, not a folder"):
            rundir.check_target(f, overwrite)
        with pytest.raises(UsageError, match="is a file, not a folder"):
            with rundir.atomic_dir(f, overwrite):
                pytest.fail("the body must not run")
    assert f.read_text() == "keep me" and _hidden(tmp_path) == []


def test_out_under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError) as e:
        rundir.check_target(tmp_path / "file" / "deeper" / "run")
    assert "file is a file, not a folder" in str(e.value) and "\n" not in str(e.value)


def test_refuses_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path), ".."):
        with pytest.raises(UsageError, match="current folder"):
            rundir.check_target(out, overwrite=True)


def _unwritable_dir(tmp_path) -> Path:
    """A folder this process cannot create anything in (skips where there is none: root ignores
    permission bits)."""
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").mkdir()
    except OSError:
        return d
    (d / "probe").rmdir()
    for candidate in (Path("/sys/trustedit-probe"), Path("/proc/trustedit-probe")):
        try:
            candidate.mkdir()
        except OSError:
            return candidate.parent
        candidate.rmdir()
    pytest.skip("no unwritable folder available (running as root without /sys)")


def test_unwritable_parent_fails_up_front(tmp_path):
    locked = _unwritable_dir(tmp_path)
    try:
        with pytest.raises(UsageError) as e:
            rundir.check_target(locked / "run")
        msg = str(e.value)
        assert msg.startswith(f"--out {locked / 'run'}: cannot write in {locked}") and "\n" not in msg
        with pytest.raises(UsageError, match="cannot write in"):
            rundir.check_target(locked / "new" / "run")
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(0o755)


def test_killed_runs_temp_folder_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    # a child process makes the temp folder and dies without cleaning up (as a SIGKILL would)
    code = ("import os, sys; from pathlib import Path; from trustedit import rundir; "
            "t = rundir.make_tmp_dir(Path(sys.argv[1])); (t / 'results.json').write_text('{}'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    stale = _hidden(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(".run.tmp-")
    # a live process's temp folder (this one's) and other targets' folders are left alone
    live = rundir.make_tmp_dir(out)
    other = tmp_path / ".other.tmp-1-00000000-x"
    other.mkdir()
    foreign_host = tmp_path / f".run.tmp-1-{'f' * 8 if rundir._host() != 'f' * 8 else '0' * 8}-x"
    foreign_host.mkdir()
    rundir.check_target(out)
    assert _hidden(tmp_path) == sorted([live.name, other.name, foreign_host.name])
    live.rmdir()


def test_temp_name_carries_pid(tmp_path):
    tmp = rundir.make_tmp_dir(tmp_path / "x")
    assert tmp.name.startswith(f".x.tmp-{os.getpid()}-")
    umask = os.umask(0)
    os.umask(umask)
    assert tmp.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


def test_commit_over_a_symlink_and_a_file_that_appeared(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep").write_text("")
    link = tmp_path / "link"
    link.symlink_to(real)
    with rundir.atomic_dir(link, overwrite=True) as tmp:
        (tmp / "new").write_text("")
    assert link.is_dir() and not link.is_symlink() and (link / "new").is_file()
    assert (real / "keep").is_file(), "followed the link and deleted its target's files"
    out = tmp_path / "late"
    with pytest.raises(UsageError, match="a file appeared there"):
        with rundir.atomic_dir(out) as tmp:
            out.write_text("someone else")
    assert out.read_text() == "someone else" and _hidden(tmp_path) == []
    out.unlink()
    with rundir.atomic_dir(out, overwrite=True) as tmp:
        out.write_text("appeared during the run")
        (tmp / "x").write_text("")
    assert (out / "x").is_file() and _hidden(tmp_path) == []
