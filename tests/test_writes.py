"""Nothing lost: every write of a run (checkpoints, metrics, results, plots, outputs) fails as one
``OSError`` saying why, leaves the last good files readable, and creates files with the user's
umask. The full-disk rows run on real tmpfs filesystems (root only)."""

import csv
import errno
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clayflow.files import WriteError, atomic_write
from clayflow.train.run import METRIC_COLUMNS, MetricsLog
from test_cli import FAST, run_cli

PAGE = 4096
TINY = ["--hidden", "16", "--layers", "2", "--no-plots", "--no-progress"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test (files and directories follow it), restored after."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


# -- a write that fails is an OSError that says why ---------------------------------------------


def _raise_runtime_error_during_a_write(cause: BaseException | None):
    def write(file):
        file.write(b"partial")
        try:
            if cause is not None:
                raise cause
        finally:  # torch's zip writer: the OSError of its write becomes the context of this
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    return write


def test_a_runtime_error_of_the_writer_is_a_write_error_naming_its_errno(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError) as caught:
        atomic_write(target, _raise_runtime_error_during_a_write(enospc))
    assert isinstance(caught.value, WriteError) and caught.value.errno == errno.ENOSPC
    assert caught.value.strerror == "No space left on device"
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_runtime_error_on_a_full_disk_says_no_space_left(tmp_path, monkeypatch):
    """No errno comes with the error: the free space of the directory tells the cause."""
    real_statvfs = os.statvfs

    def full(path):
        st = real_statvfs(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, *tuple(st)[5:]))

    monkeypatch.setattr(os, "statvfs", full)
    with pytest.raises(WriteError) as caught:
        atomic_write(tmp_path / "x.pt", _raise_runtime_error_during_a_write(None))
    assert caught.value.errno == errno.ENOSPC and "No space left on device" in caught.value.strerror
    assert not list(tmp_path.iterdir())


def test_an_unexplained_writer_error_is_still_a_write_error_that_names_it(tmp_path):
    with pytest.raises(WriteError) as caught:
        atomic_write(tmp_path / "x.pt", _raise_runtime_error_during_a_write(None))
    assert "RuntimeError" in caught.value.strerror and "unexpected pos" in caught.value.strerror
    assert isinstance(caught.value.__cause__, RuntimeError) and not list(tmp_path.iterdir())


@pytest.mark.parametrize("signal", [KeyboardInterrupt, SystemExit, TypeError])
def test_an_interrupt_or_a_bug_during_a_write_stays_what_it_is(tmp_path, signal):
    """Only a RuntimeError (torch's zip writer) becomes a write error: a bug must not read
    "fix the disk"."""
    def write(file):
        file.write(b"partial")
        raise signal()

    with pytest.raises(signal):
        atomic_write(tmp_path / "x.pt", write)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not os.access("/dev/full", os.W_OK), reason="needs /dev/full (Linux)")
def test_a_metrics_row_that_cannot_be_written_is_an_oserror():
    log = MetricsLog.__new__(MetricsLog)
    log.path = Path("/dev/full")  # every write: ENOSPC
    with pytest.raises(OSError) as caught:
        log.append(dict.fromkeys(METRIC_COLUMNS, 1.0))
    assert caught.value.errno == errno.ENOSPC


# -- files follow the umask ---------------------------------------------------------------------


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path, umask):
    umask(0o027)
    atomic_write(tmp_path / "new", lambda f: f.write(b"x"))
    assert _mode(tmp_path / "new") == 0o640
    (tmp_path / "old").write_bytes(b"old")
    os.chmod(tmp_path / "old", 0o664)
    atomic_write(tmp_path / "old", lambda f: f.write(b"new"))
    assert _mode(tmp_path / "old") == 0o664 and (tmp_path / "old").read_bytes() == b"new"


@pytest.mark.parametrize("mask, plots", [(0o022, True), (0o077, False)])
def test_a_new_run_is_readable_as_the_umask_says(tmp_path, capsys, umask, mask, plots):
    umask(mask)
    run = tmp_path / "run"
    argv = ["train", *FAST, "--plots" if plots else "--no-plots", "--out", run]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    modes = {str(p.relative_to(run)): oct(_mode(p)) for p in run.rglob("*") if p.is_file()}
    names = set(modes)
    run_files = {"config.json", "metrics.csv", "results.json", "checkpoints/last.pt", "checkpoints/best.pt"}
    assert run_files <= names
    assert any(name.startswith("plots/") and name.endswith(".png") for name in names) == plots
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    assert modes == dict.fromkeys(names, oct(file_mode))
    dirs = [run, *(p for p in run.rglob("*") if p.is_dir())]
    assert {str(d): oct(_mode(d)) for d in dirs} == {str(d): oct(dir_mode) for d in dirs}


def test_sample_force_keeps_the_mode_of_the_file_it_replaces(good_run, tmp_path, capsys, umask):
    umask(0o022)
    shared = tmp_path / "shared.csv"
    shared.write_text("old\n")
    os.chmod(shared, 0o664)
    code, _, err = run_cli(capsys, "sample", good_run, "--n", "5", "--out", shared, "--force")
    assert code == 0 and len(shared.read_text().splitlines()) == 6, err
    assert _mode(shared) == 0o664
    code, _, err = run_cli(capsys, "sample", good_run, "--n", "5", "--out", tmp_path / "new.npy")
    assert code == 0 and _mode(tmp_path / "new.npy") == 0o644, err


def test_a_symbolic_link_to_nothing_at_out_is_replaced_only_with_force(good_run, tmp_path, capsys):
    link = tmp_path / "s.csv"
    link.symlink_to(tmp_path / "not-yet.csv")
    code, _, err = run_cli(capsys, "sample", good_run, "--n", "5", "--out", link)
    assert code == 2 and "exists; choose another --out or pass --force" in err, err
    assert link.is_symlink()
    code, _, err = run_cli(capsys, "sample", good_run, "--n", "5", "--out", link, "--force")
    assert code == 0 and not link.is_symlink() and not (tmp_path / "not-yet.csv").exists(), err


def test_plots_that_cannot_be_written_give_one_line(good_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    shutil.rmtree(run / "plots", ignore_errors=True)
    (run / "plots").write_text("a file where the plots folder goes\n")
    code, _out, err = run_cli(capsys, "plot", run)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"clayflow: error: cannot write the plots of {run}:"), err


# -- a real full disk -----------------------------------------------------------------------------


def _mount_tmpfs(path: Path, size: int) -> None:
    path.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a 4 MiB tmpfs for one test; ``leave_free(n)`` fills it with a filler file so that
    exactly ``n`` bytes (whole pages) stay free, ``free()`` deletes the filler."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mnt = tmp_path / "mnt"
    _mount_tmpfs(mnt, 4 << 20)

    class Disk:
        path = mnt
        filler = mnt / "filler"

        def available(self) -> int:
            st = os.statvfs(mnt)
            return st.f_bavail * st.f_frsize

        def leave_free(self, n: int) -> None:
            assert n % PAGE == 0
            self.filler.unlink(missing_ok=True)
            self.filler.write_bytes(b"\0" * (self.available() - n))
            assert self.available() == n

        def free(self) -> None:
            self.filler.unlink()

    try:
        yield Disk()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _clayflow(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clayflow.cli.main", *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _pages(n_bytes: int) -> int:
    return -(-n_bytes // PAGE) * PAGE


def _assert_one_line_and_files_intact(proc, run: Path) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("clayflow:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "No space left on device" in lines[0], lines[0]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    for checkpoint in run.glob("checkpoints/*.pt"):
        torch.load(checkpoint, weights_only=True)
    return lines[0]


LINE = re.compile(
    r"clayflow: error: cannot write the (?P<what>[a-z ]+) at step (?P<step>\d+) "
    r"\(No space left on device\); "
    r"((?P<removed>no checkpoint had been written, so the run was removed)\. .*then run the command again"
    r"|kept the last good checkpoint \(step (?P<kept>\d+)\)\. .*clayflow train --resume (?P<run>\S+))$"
)


def test_a_full_disk_stops_training_with_one_line_and_the_run_resumes(tmpfs, tmp_path, capsys):
    """Three points where a real disk fills: the first checkpoint, a later one (the new last.pt
    is written beside the old one) and a metrics row (the disk filled by another program while
    the run trains); then the plots of a run on a full disk."""
    every_10 = ["--steps", "40", "--eval-every", "10", "--checkpoint-every", "10"]
    outcomes = []

    def check(name, free, run, proc, options, what, first):
        line = _assert_one_line_and_files_intact(proc, run)
        match = LINE.fullmatch(line)
        assert match and match["what"] == what, line
        if first:  # nothing worth keeping: the run folder is gone, and the command can run again
            assert match["removed"] and not run.exists(), line
            tmpfs.free()
            code, _, err = run_cli(capsys, *first)
        else:
            assert match["run"] == str(run), line
            assert match["kept"] is not None and int(match["kept"]) < int(match["step"]), line
            assert torch.load(run / "checkpoints/last.pt", weights_only=True)["step"] == int(match["kept"])
            tmpfs.free()
            code, _, err = run_cli(capsys, "train", "--resume", run, "--no-progress")
        assert code == 0, err
        with open(run / "metrics.csv", newline="") as file:
            steps = [int(r["step"]) for r in csv.DictReader(file)]
        every, total = (int(options[options.index(flag) + 1]) for flag in ("--eval-every", "--steps"))
        assert steps == list(range(0, total + 1, every)), steps  # no row lost, none twice
        outcomes.append(f"tmpfs, {free} ({name}): exit {proc.returncode}: {line}")
        again = "the same command" if first else "clayflow train --resume"
        outcomes.append(f"  after deleting the filler: {again}: exit {code}")

    # Checkpoints of moons runs (about 430 KiB) on a disk that fills in the middle of one: there
    # torch's zip writer raises RuntimeError ("unexpected pos"), which must arrive as ENOSPC.
    # The first checkpoint does not fit in 216 KiB beside the config, marker and metrics files.
    moons = [*TINY, "--no-select-best"]
    run = tmpfs.path / "run0"
    tmpfs.leave_free(54 * PAGE)
    argv = ["train", *moons, *every_10, "--out", run]
    proc = _clayflow(*argv)
    check("first checkpoint", "216 KiB free", run, proc, every_10, "checkpoint", first=argv)

    # Room for one last.pt and a half: a later one, written beside it, does not fit.
    last_pt = _pages((run / "checkpoints/last.pt").stat().st_size)
    free = 4 * PAGE + last_pt + _pages(last_pt // 2)
    run = tmpfs.path / "run1"
    tmpfs.leave_free(free)
    proc = _clayflow("train", *moons, *every_10, "--out", run)
    check("later checkpoint", f"{free // 1024} KiB free", run, proc, every_10, "checkpoint", first=None)

    # Filled by another program after step 26 (from inside the run, so at that step on any
    # machine). Metrics rows are appended, so the rows after it go on filling the last page of
    # metrics.csv; how much of it is left depends on the rows' timing columns. The first row
    # that needs a new page fails: within 4 KiB of rows (about 45), long before the checkpoint.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    np.savetxt(tmp_path / "d.csv", np.c_[x[:, 0], x[:, 1] + x[:, 0] ** 2], delimiter=",")
    base = ["--data", tmp_path / "d.csv", *TINY, "--no-select-best"]  # small data: quick evaluations
    options = ["--steps", "200", "--eval-every", "1", "--checkpoint-every", "150"]
    run = tmpfs.path / "run2"
    tmpfs.filler.unlink(missing_ok=True)
    interrupt = Path(__file__).parent / "interrupt.py"
    proc = subprocess.run(
        [sys.executable, str(interrupt), "26", "step", f"fill:{tmpfs.filler}",
         *map(str, [*base, *options, "--out", run])],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    failed = re.search(r"cannot write the metrics at step (\d+)", proc.stderr)
    assert failed and 26 <= int(failed[1]) < 150, proc.stderr
    check("metrics row", "filled while training", run, proc, options, "metrics", first=None)

    run = tmpfs.path / "run1"
    tmpfs.leave_free(4 * PAGE)
    proc = _clayflow("plot", run)
    line = _assert_one_line_and_files_intact(proc, run)
    assert line.startswith(f"clayflow: error: cannot write the plots of {run}: No space left on device"), line
    outcomes.append(f"tmpfs, 16 KiB free (plots): exit {proc.returncode}: {line}")
    with capsys.disabled():
        print("\n" + "\n".join(outcomes))
