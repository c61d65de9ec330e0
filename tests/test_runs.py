"""Run directories: only clayflow's are replaced, never shared, locked while in use, and resumed
only when the checkpoint, the options and the data still agree; output that cannot fail the work."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clayflow.train.rundir import MARKER_NAME, RunLock
from test_cli import FAST, run_cli, snapshot

CLI = [sys.executable, "-m", "clayflow"]  # the installed command's entry point


def cli(*args, cwd=None, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, check=False, **kwargs)  # fmt: skip


PROGRESS = re.compile(r"step \d+/\d+  |training \S+ \([\d,]+ parameters\) on |column\(s\) .* hold few whole-number values")


def one_error_line(err: str) -> str:
    """The one error line of ``err``, besides the progress lines a run prints before it fails."""
    lines = [line for line in err.strip().splitlines() if not PROGRESS.match(line)]
    assert len(lines) == 1 and lines[0].startswith("clayflow: error: ") and "Traceback" not in err, err
    return lines[0]


# -- what --force may replace --------------------------------------------------------------------


def test_a_run_carries_the_marker_that_force_requires(good_run):
    marker = json.loads((good_run / MARKER_NAME).read_text())
    assert marker["format"] == 1 and len(marker["run_id"]) == 32


@pytest.mark.parametrize("content", ["config.json", "results.json", "metrics.csv"])
def test_force_refuses_a_folder_that_only_looks_like_a_run(tmp_path, capsys, content):
    project = tmp_path / "myproject"
    project.mkdir()
    (project / content).write_text("{}")
    (project / "thesis.tex").write_text("years of work")
    before = snapshot(project)
    code, _, err = run_cli(capsys, "train", *FAST, "--out", project, "--force")
    assert code == 2 and "is not a clayflow run (no clayflow-run.json)" in one_error_line(err)
    assert snapshot(project) == before


@pytest.mark.parametrize("where", [".", "..", "cwd_absolute", "home", "root"])
@pytest.mark.parametrize("force", [False, True])
def test_the_working_directory_its_parents_home_and_root_are_refused(tmp_path, monkeypatch, capsys, where, force):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "config.json").write_text("{}")  # as a folder where --force once wiped everything
    monkeypatch.chdir(work)
    out = {"cwd_absolute": str(work), "home": str(Path.home()), "root": "/"}.get(where, where)
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "train", *FAST, "--out", out, *(["--force"] if force else []))
    assert code == 2 and "refusing to use" in one_error_line(err)
    assert snapshot(tmp_path) == before


def test_force_replaces_a_run_only_after_the_new_one_has_checkpointed(good_run, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, _ = run_cli(capsys, "train", *FAST, "--out", run)
    assert code == 0
    before = snapshot(run)
    # A replacement that diverges at its first step fails: the old run is untouched, nothing is left beside it.
    code, _, err = run_cli(capsys, "train", *FAST, "--lr", "1e30", "--out", run, "--force")
    assert code == 1 and f"the run in {run} was not replaced" in one_error_line(err)
    assert snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # One that trains replaces it, and leaves nothing beside it either.
    code, _, err = run_cli(capsys, "train", *FAST, "--seed", "5", "--out", run, "--force")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert not list(run.glob(".*.new-*"))


def test_force_does_not_replace_a_run_that_is_training(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, "train", *FAST, "--out", run)[0] == 0
    lock = RunLock(run)  # as a process training in it
    try:
        before = snapshot(run)
        code, _, err = run_cli(capsys, "train", *FAST, "--out", run, "--force")
        assert code == 1 and f"is in use by another clayflow process (PID {os.getpid()})" in one_error_line(err)
        assert snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    finally:
        lock.release()


# -- runs started together -----------------------------------------------------------------------

CLAIM = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from clayflow.train.rundir import NewRun
    sys.stdin.read()  # every process waits at the same line, then all claim the same name
    run = NewRun(Path("runs/realnvp-moons-20260101-000000"), unique=True)
    print(run.path)
    """
)


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    """The default name has one-second resolution: directories are made with mkdir (no
    exist_ok), and a taken name gets a suffix, so no two runs share one."""
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIM], cwd=tmp_path, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate("go") for p in procs]
    paths = [out.strip() for out, _ in outputs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sorted(paths) == [
        "runs/realnvp-moons-20260101-000000",
        *(f"runs/realnvp-moons-20260101-000000-{n}" for n in (2, 3, 4)),
    ]
    ids = {json.loads((tmp_path / p / MARKER_NAME).read_text())["run_id"] for p in paths}
    assert len(ids) == 4


def test_two_trainings_into_one_out_leave_one_run_and_refuse_the_other(tmp_path):
    run = tmp_path / "run"
    argv = [*CLI, "train", *FAST, "--steps", "60", "--out", str(run)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] in (1, 2), results
    refused = next(err for code, err in results if code)
    assert "is in use by another clayflow process" in refused or "is not empty" in refused or "taken" in refused
    steps = [row.split(",")[0] for row in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(s) for s in range(0, 61, 10)]  # one run's rows, once each


def test_a_second_resume_of_a_run_in_use_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, "train", *FAST, "--out", run)[0] == 0
    lock = RunLock(run)
    try:
        before = snapshot(run)
        code, _, err = run_cli(capsys, "train", "--resume", run, "--steps", "40", "--no-plots")
        assert code == 1 and f"(PID {os.getpid()})" in one_error_line(err)
        assert snapshot(run) == before
    finally:
        lock.release()
    assert run_cli(capsys, "train", "--resume", run, "--steps", "40", "--no-plots")[0] == 0  # free again


def test_an_empty_folder_given_as_out_is_used(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    code, _, err = run_cli(capsys, "train", *FAST, "--out", out)
    assert code == 0 and (out / MARKER_NAME).exists() and (out / "results.json").exists(), err


# -- resume: same run, same options, same data ---------------------------------------------------


def test_repeating_the_training_command_with_resume_is_accepted(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *FAST, "--lr", "0.002", "--batch-size", "512", "--out", run]
    assert run_cli(capsys, *argv)[0] == 0
    code, _, err = run_cli(capsys, *argv, "--resume", run)
    assert code == 0, err


def test_an_edited_config_json_is_noticed(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, "train", *FAST, "--steps", "20", "--out", run)[0] == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "lr": 0.05, "steps": 30}))
    before = snapshot(run)
    code, _, err = run_cli(capsys, "train", "--resume", run)
    assert code == 1 and "config.json was edited since the checkpoint (lr 0.002 -> 0.05)" in one_error_line(err)
    assert snapshot(run) == before


@pytest.mark.parametrize("change", ["rows", "values"])
def test_a_data_file_that_changed_under_a_run_is_noticed(tmp_path, capsys, change):
    table = tmp_path / "t.csv"
    table.write_text("".join(f"{i % 7},{(i * 3) % 11}\n" for i in range(100)))
    run = tmp_path / "run"
    assert run_cli(capsys, "train", *FAST, "--steps", "20", "--data", table, "--out", run)[0] == 0
    if change == "rows":
        table.write_text(table.read_text() + "1,2\n")
    else:
        table.write_text(table.read_text().replace("3,", "4,", 1))
    before = snapshot(run)
    code, _, err = run_cli(capsys, "train", "--resume", run, "--steps", "30")
    line = one_error_line(err)
    assert code == 1 and "changed since" in line
    assert ("100 rows then, 101 now" if change == "rows" else "same size, other values") in line
    assert snapshot(run) == before


def test_a_new_steps_on_resume_says_what_it_does_to_the_schedule(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *FAST, "--steps", "40", "--warmup", "5", "--out", run]
    assert run_cli(capsys, *argv)[0] == 0
    code, _, err = run_cli(capsys, "train", "--resume", run, "--steps", "80", "--no-plots")
    assert code == 0 and "--steps changed from 40 to 80: the cosine schedule now ends at step 80" in err


@pytest.mark.parametrize("content", ["[1, 2]", '{"steps": "many"}', '{"wings": 2}', "{broken"])
@pytest.mark.parametrize("verb", ["train --resume", "plot", "score", "verify", "explain"])
def test_a_malformed_run_config_is_a_runtime_error(good_run, tmp_path, capsys, content, verb):
    """Every command that reads the run's options names the broken file (score, verify and explain read
    them to find the run's data)."""
    run = tmp_path / "run"
    import shutil

    shutil.copytree(good_run, run)
    (run / "config.json").write_text(content)
    before = snapshot(run)
    scored = tmp_path / "rows.csv"
    scored.write_text("x0,x1\n0.1,0.2\n")
    argv = {
        "train --resume": ["train", "--resume", run],
        "plot": ["plot", run],
        "score": ["score", run, "--data", scored, "--fpr", "0.05", "--out", tmp_path / "scores.csv"],
        "verify": ["verify", run],
        "explain": ["explain", run, "--out", tmp_path / "explained"],
    }[verb]
    code, _, err = run_cli(capsys, *argv)
    line = one_error_line(err)
    assert code == 1 and ("config.json is malformed" in line or "config.json is not valid JSON" in line)
    assert snapshot(run) == before


@pytest.mark.parametrize("config", [None, '{"steps": "many", "data": "moons"}'])
def test_plot_names_a_missing_or_malformed_config_before_the_checkpoints(good_run, tmp_path, capsys, config):
    """A run with neither a readable config.json nor checkpoints: the config is named (it
    is read first), not the checkpoints, nor 'does not say what data'."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    shutil.rmtree(run / "checkpoints")
    if config is None:
        (run / "config.json").unlink()
    else:
        (run / "config.json").write_text(config)
    code, _, err = run_cli(capsys, "plot", run)
    line = one_error_line(err)
    assert code == 1 and "config.json" in line and ("malformed" in line or "does not exist" in line), line


# -- output problems after the work is done ------------------------------------------------------


def test_a_closed_stdout_does_not_fail_a_finished_run(tmp_path):
    """As in ``clayflow train | head -1``: the reader is gone before the first line."""
    run = tmp_path / "run"
    proc = subprocess.Popen([*CLI, "train", *FAST[:-1], "--out", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert (run / "results.json").exists() and (run / "plots/samples.png").exists()


def test_an_ascii_terminal_and_a_non_ascii_path_do_not_fail_the_run(tmp_path):
    run = tmp_path / "résumé-run"
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    proc = cli("train", *FAST[:-1], "--out", run, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "r\\xe9sum\\xe9-run" in proc.stdout and (run / "plots/samples.png").exists()


CTRL_C_WHILE_TORCH_LOADS = textwrap.dedent(
    """
    import os, signal, sys

    # Ctrl-C works as in a terminal even when the suite was started in the background of a
    # non-interactive shell, whose children inherit SIGINT ignored (Python then keeps it so)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    class CtrlC:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C now
            return None

    sys.meta_path.insert(0, CtrlC())
    from clayflow.cli import main
    sys.exit(main(["train"]))
    """
)


def test_ctrl_c_while_torch_loads_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_TORCH_LOADS], capture_output=True,
                          text=True, cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 130 and "interrupted" in one_error_line(proc.stderr)
    assert not (tmp_path / "runs").exists()


def test_import_clayflow_loads_no_torch_cli_or_plotting():
    code = "import sys, clayflow; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'argparse', 'tqdm')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # torch itself imports tqdm (torch.hub); clayflow's progress bars live in clayflow.train.loop
    code = "import sys, clayflow; clayflow.models.realnvp(2); print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m.startswith(('clayflow.cli', 'clayflow.plotting', 'clayflow.train.loop'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_stop_signal_exit_codes_follow_the_shell_convention():
    from clayflow.train.signals import StopRequest

    request = StopRequest()
    with request.catching():
        os.kill(os.getpid(), signal.SIGTERM)
    assert (request.name, request.exit_code) == ("SIGTERM", 143)


# -- found by review: stops and failures around the edges of a run -------------------------------


def test_ctrl_c_during_a_replacement_keeps_the_old_run(tmp_path, capsys):
    """Ctrl-C a few steps into ``--force`` usually means "wrong command": the old run stays."""
    from test_train import train_and_stop

    run = tmp_path / "run"
    assert run_cli(capsys, "train", *FAST, "--out", run)[0] == 0
    before = snapshot(run)
    stopped = train_and_stop(3, "step", signal.SIGINT, *FAST, "--seed", "9", "--out", str(run), "--force")
    assert stopped.returncode == 130
    assert f"before the new run's first checkpoint: the run in {run} was not replaced" in one_error_line(stopped.stderr)
    assert snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("renameat2", [True, False])
def test_directories_are_exchanged_whole_or_not_at_all(tmp_path, monkeypatch, renameat2):
    from clayflow.train import rundir

    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "name").write_text(folder.name)
    if not renameat2:
        monkeypatch.setattr(rundir, "_renameat2", lambda: None)
    rundir.exchange_directories(a, b)
    assert ((a / "name").read_text(), (b / "name").read_text()) == ("b", "a")
    # The fallback's second rename fails (a full directory, a busy mount): the first is undone.
    monkeypatch.setattr(rundir, "_renameat2", lambda: None)
    calls = []
    real_rename = os.rename

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(rundir.os, "rename", rename)
    with pytest.raises(OSError):
        rundir.exchange_directories(a, b)
    assert ((a / "name").read_text(), (b / "name").read_text()) == ("b", "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("module", ["torch", "clayflow.train.loop", "sklearn"])
def test_ctrl_c_at_any_moment_of_startup_is_one_line(tmp_path, module):
    code = CTRL_C_WHILE_TORCH_LOADS.replace('name == "torch"', f"name == {module!r}")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 130 and "interrupted" in one_error_line(proc.stderr), proc.stderr


@pytest.mark.parametrize("redirect", ["stdout to /dev/full", "stderr closed"])
def test_output_that_cannot_be_written_does_not_fail_the_run(tmp_path, redirect):
    run = tmp_path / "run"
    argv = [*CLI, "train", *map(str, FAST[:-1]), "--out", str(run)]
    if redirect == "stdout to /dev/full":
        with open("/dev/full", "w") as full:
            proc = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, check=False)
    else:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False,
                              pass_fds=(), preexec_fn=lambda: os.close(2))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (run / "results.json").exists() and (run / "plots/samples.png").exists()


def test_a_config_file_value_that_a_flag_overrides_is_not_checked(tmp_path, capsys):
    config = tmp_path / "gpu.json"
    config.write_text(json.dumps({"device": "cuda:7"}))  # refused alone, here: no CUDA
    code, _, err = run_cli(capsys, "train", *FAST, "--config", config, "--device", "cpu", "--out", tmp_path / "r")
    assert code == 0, err


def test_a_saved_config_an_older_clayflow_accepted_still_plots(good_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "patience": 3, "select_best": False}))
    code, _, err = run_cli(capsys, "plot", run)
    assert code == 0, err


@pytest.mark.parametrize("how", ["./t.csv", "from a sub-folder"])
def test_resume_accepts_the_same_data_spelled_another_way(tmp_path, monkeypatch, capsys, how):
    table = tmp_path / "t.csv"
    table.write_text("".join(f"{i % 7},{(i * 3) % 11}\n" for i in range(100)))
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "train", *FAST, "--steps", "20", "--data", "t.csv", "--out", "run")[0] == 0
    if how == "./t.csv":
        code, _, err = run_cli(capsys, "train", "--resume", "run", "--data", "./t.csv", "--steps", "30")
    else:
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path / "sub")
        code, _, err = run_cli(capsys, "train", "--resume", "../run", "--data", "../t.csv", "--steps", "30")
    assert code == 0, err
    other = tmp_path / "other.csv"
    other.write_text("".join(f"{i % 5},{(i * 3) % 13}\n" for i in range(100)))
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "run", "--data", other, "--steps", "40")
    assert code == 1 and "other.csv' holds other data than " in one_error_line(err)


@pytest.mark.parametrize(
    "argv, code, words",
    [
        (["train", "--resume", "{tmp}/afile"], 1, "does not exist"),
        (["train", "--resume", "{run}", "--steps", "10"], 2, "the run has reached step 30; --steps 10"),
        (["train", *FAST, "--out", "{run}/inner"], 2, "is inside the run"),
        (["train", *FAST, "--out", "{tmp}/afile"], 2, "exists and is not a directory"),
    ],
    ids=["resume a file", "resume to fewer steps", "a run inside a run", "out is a file"],
)
def test_more_bad_run_directories_give_one_line(good_run, tmp_path, capsys, argv, code, words):
    (tmp_path / "afile").write_text("x")
    before = snapshot(good_run), snapshot(tmp_path)
    got, _, err = run_cli(capsys, *[a.format(run=good_run, tmp=tmp_path) for a in argv])
    assert got == code and words in one_error_line(err)
    assert (snapshot(good_run), snapshot(tmp_path)) == before


def test_python_api_checks_the_config_and_resumes_with_the_runs_own(tmp_path):
    from clayflow.errors import UsageError
    from clayflow.train import TrainConfig, train

    with pytest.raises(UsageError, match="lr must be a finite number"):
        train(TrainConfig(lr=float("nan")), tmp_path / "nan")
    assert not (tmp_path / "nan").exists()
    run = tmp_path / "run"
    train(TrainConfig(steps=20, hidden=16, layers=2, eval_every=10), run, progress=False)
    assert train(None, run, resume=True, progress=False).steps == 20
    with pytest.raises(UsageError, match="changes --hidden 16 -> 32"):
        train(TrainConfig(steps=20, hidden=32, layers=2, eval_every=10), run, resume=True, progress=False)


@pytest.mark.parametrize("name", ["config.json", "metrics.csv", "clayflow-run.json"])
@pytest.mark.parametrize("verb", ["train --resume", "plot", "train --force"])
def test_a_fifo_inside_a_run_is_refused_not_read(good_run, tmp_path, name, verb):
    """Reading a FIFO blocks until a writer comes: every run file is checked to be a regular
    file first. A subprocess, so that a hang fails the test instead of stopping the suite."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    (run / name).unlink()
    os.mkfifo(run / name)
    argv = {"train --resume": ["train", "--resume", run], "plot": ["plot", run],
            "train --force": ["train", *FAST, "--out", run, "--force"]}[verb]  # fmt: skip
    proc = cli(*argv, cwd=tmp_path, timeout=120)
    # plot and a resume do not need the marker (a checkpoint proves the run is clayflow's);
    # --force needs it, and replaces a run whatever its other files are (without reading them).
    marker = name == "clayflow-run.json"
    expected = {"train --force": 2 if marker else 0}.get(verb, 0 if marker else 1)
    assert proc.returncode == expected and "Traceback" not in proc.stderr, proc.stderr
    assert stat_is_fifo(run / name) == (expected != 0 or verb != "train --force")


def stat_is_fifo(path: Path) -> bool:
    import stat

    return path.exists() and stat.S_ISFIFO(os.stat(path).st_mode)


def test_a_killed_replacement_is_cleaned_up_by_the_next(tmp_path, capsys):
    from test_train import train_and_stop

    run = tmp_path / "run"
    assert run_cli(capsys, "train", *FAST, "--out", run)[0] == 0
    stopped = train_and_stop(3, "step", signal.SIGKILL, *FAST, "--out", str(run), "--force")
    assert stopped.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".run.clayflow-*"))) == 1  # what a SIGKILL cannot clean up
    assert run_cli(capsys, "train", *FAST, "--out", run, "--force")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resume_does_not_block_on_a_fifo_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert subprocess.run([*CLI, "train", *FAST, "--out", str(run)], capture_output=True, check=False).returncode == 0
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.csv", "results.json"):
        (run / name).unlink()
    os.mkfifo(run / "checkpoints/best.pt")
    done = subprocess.run([*CLI, "train", "--resume", str(run)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "has lost its checkpoint" in one_error_line(done.stderr)
