"""The fault matrix: one row per (verb, fault), for train, sample, score, plot and ``load``.

Every row must give one line on stderr that names the problem, exit 2 for a usage error
(options, names, values) or 1 for a runtime one (files, data, checkpoints), print no
traceback, and leave the run it reads and any output directory unchanged. Faults during
training (SIGKILL, SIGINT, divergence) are in ``test_train.py``; a failed checkpoint write
is here.
"""

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import clayflow
from clayflow.cli.main import main
from clayflow.errors import ClayflowError
from test_cli import FAST, run_cli, snapshot
from test_image_data import _Exploit, write_idx, write_images

USAGE, RUNTIME = 2, 1


def _write_faulty_files(tmp: Path) -> None:
    """Every bad input file the rows below name, written into ``tmp``."""
    rng = np.random.default_rng(0)
    (tmp / "empty.csv").write_text("")
    (tmp / "header.csv").write_text("a,b\n")
    (tmp / "text.csv").write_text("1,2\n3,abc\n" * 10)
    (tmp / "nan.csv").write_text("1,2\n3,nan\n" * 10)
    (tmp / "inf.csv").write_text("1,2\n3,inf\n" * 10)
    (tmp / "one.csv").write_text("a,b\n1,2\n")
    (tmp / "three.csv").write_text("1,2,3\n" * 10)
    np.savetxt(tmp / "constant.csv", np.c_[rng.normal(size=50), np.full(50, 5.5)], delimiter=",")  # constant, not a whole number
    (tmp / "a_file").write_text("x")
    (tmp / "existing.csv").write_text("keep me\n")
    (tmp / "unknown.json").write_text('{"stepz": 10}')
    (tmp / "other_lr.json").write_text('{"lr": 0.5}')
    (tmp / "badtype.json").write_text('{"steps": "many"}')
    (tmp / "broken.json").write_text('{"steps": 10')
    (tmp / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    mixed = write_images(tmp / "mixed", 3, size=(8, 8))
    write_images(tmp / "mixed_extra", 1, size=(6, 6)).joinpath("img00.png").rename(mixed / "small.png")
    (tmp / "mnist").mkdir()
    write_idx(tmp / "mnist/train-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    cut = tmp / "mnist/t10k-images-idx3-ubyte"
    write_idx(cut, rng.integers(0, 256, (5, 28, 28)))
    cut.write_bytes(cut.read_bytes()[:-100])
    for name, content in (("cifar_cut", b"\x80\x02}q\x00(X"), ("cifar_code", None)):
        folder = tmp / name / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with open(folder / batch, "wb") as file:
                if content is None:
                    pickle.dump({b"data": _Exploit()}, file)
                else:
                    file.write(content)


O = "{tmp}/o"  # the output directory of train rows: it must not exist afterwards

ROWS = [
    # (verb, fault, argv with {run} {tmp} {img}, exit code, words in the one line)
    # -- data ----------------------------------------------------------------------------------
    ("train", "missing data file", ["train", "--data", "{tmp}/nope.csv", "--out", O], RUNTIME, "does not exist"),
    ("train", "empty file", ["train", "--data", "{tmp}/empty.csv", "--out", O], RUNTIME, "is empty"),
    ("train", "header only", ["train", "--data", "{tmp}/header.csv", "--out", O], RUNTIME, "header but no data rows"),
    ("train", "non-numeric cell", ["train", "--data", "{tmp}/text.csv", "--out", O], RUNTIME, "'abc' is not a number"),
    ("train", "NaN value", ["train", "--data", "{tmp}/nan.csv", "--out", O], RUNTIME, "column 2 is nan"),
    ("train", "inf value", ["train", "--data", "{tmp}/inf.csv", "--out", O], RUNTIME, "column 2 is inf"),
    ("train", "one row", ["train", "--data", "{tmp}/one.csv", "--out", O], RUNTIME, "has 1 row(s); training needs at least 10"),
    ("train", "constant column", ["train", "--data", "{tmp}/constant.csv", "--out", O], RUNTIME, "column(s) 2 are constant"),
    ("train", "images of mixed sizes", ["train", "--data", "images:{tmp}/mixed", "--out", O], RUNTIME, "small.png is 6x6"),
    ("train", "truncated IDX file", ["train", "--data", "mnist:{tmp}/mnist", "--out", O], RUNTIME, "t10k-images-idx3-ubyte is truncated"),
    ("train", "truncated CIFAR pickle", ["train", "--data", "cifar10:{tmp}/cifar_cut", "--out", O], RUNTIME, "data_batch_1 is not a CIFAR-10 batch: pickle data was truncated"),
    ("train", "CIFAR pickle holding code", ["train", "--data", "cifar10:{tmp}/cifar_code", "--out", O], RUNTIME, "refusing to load"),
    ("score", "missing data file", ["score", "{run}", "--data", "{tmp}/nope.csv", "--out", "{tmp}/s.csv"], RUNTIME, "does not exist"),
    ("score", "empty file", ["score", "{run}", "--data", "{tmp}/empty.csv", "--out", "{tmp}/s.csv"], RUNTIME, "is empty"),
    ("score", "non-numeric cell", ["score", "{run}", "--data", "{tmp}/text.csv", "--out", "{tmp}/s.csv"], RUNTIME, "'abc' is not a number"),
    ("score", "NaN value", ["score", "{run}", "--data", "{tmp}/nan.csv", "--out", "{tmp}/s.csv"], RUNTIME, "is nan"),
    ("score", "wrong column count", ["score", "{run}", "--data", "{tmp}/three.csv", "--out", "{tmp}/s.csv"], RUNTIME, "has 3 columns but the model was trained on 2"),
    ("score", "images for a table model", ["score", "{run}", "--data", "digits", "--out", "{tmp}/s.csv"], RUNTIME, "examples of shape (1, 8, 8) but the model"),
    ("score", "table for an image model", ["score", "{img}", "--data", "moons", "--out", "{tmp}/s.csv"], RUNTIME, "examples of shape (2,) but the model"),
    ("score", "levels out of range", ["score", "{img}", "--data", "{tmp}/bad.npy", "--out", "{tmp}/s.csv"], RUNTIME, "integer levels in [0, 255]"),
    ("score", "flat array for an image model", ["score", "{img}", "--data", "{tmp}/flat.npy", "--out", "{tmp}/s.csv"], RUNTIME, "numeric (N, C, H, W) array"),
    # -- options -------------------------------------------------------------------------------
    ("train", "unknown model", ["train", "--model", "glowz", "--out", O], USAGE, "unknown model 'glowz'"),
    ("train", "unknown dataset", ["train", "--data", "moonz", "--out", O], USAGE, "unknown dataset 'moonz'"),
    ("train", "bad image spec", ["train", "--data", "patches:1", "--out", O], USAGE, "SIZE >= 2"),
    ("train", "zero steps", ["train", "--steps", "0", "--out", O], USAGE, "steps must be > 0"),
    ("train", "negative steps", ["train", "--steps", "-5", "--out", O], USAGE, "steps must be > 0"),
    ("train", "zero batch size", ["train", "--batch-size", "0", "--out", O], USAGE, "batch_size must be > 0"),
    ("train", "negative lr", ["train", "--lr", "-1", "--out", O], USAGE, "lr must be > 0"),
    ("train", "zero lr", ["train", "--lr", "0", "--out", O], USAGE, "lr must be > 0"),
    ("train", "non-integer steps", ["train", "--steps", "abc", "--out", O], USAGE, "invalid int value"),
    ("train", "unknown choice", ["train", "--optimizer", "sgd", "--out", O], USAGE, "optimizer must be one of adam, adamw"),
    ("train", "unknown solver", ["train", "--model", "cnf", "--solver", "rk45", "--out", O], USAGE, "unknown ODE solver 'rk45'"),
    ("train", "option the model lacks", ["train", "--model", "nice", "--batch-norm", "--out", O], USAGE, "has no option --batch-norm"),
    ("train", "model too small", ["train", "--hidden", "0", "--out", O], USAGE, "hidden must be > 0"),
    ("train", "image model on a table", ["train", "--data", "digits", "--model", "nice", "--out", O], USAGE, "does not support image data"),
    ("train", "too many scales", ["train", "--data", "digits", "--scales", "4", "--out", O], USAGE, "divisible by 8"),
    ("train", "flow matching without a CNF", ["train", "--objective", "fm", "--out", O], USAGE, "use --model cnf"),
    ("train", "OT without flow matching", ["train", "--model", "cnf", "--ot", "--out", O], USAGE, "add --objective fm"),
    ("train", "ActNorm and batch norm", ["train", "--model", "cnf", "--blocks", "2", "--actnorm", "--batch-norm", "--out", O], USAGE, "choose ActNorm or batch norm"),
    ("train", "flow matching with two blocks", ["train", "--model", "cnf", "--objective", "fm", "--blocks", "2", "--out", O], USAGE, "use --blocks 1"),
    ("train", "patience without best", ["train", "--patience", "3", "--no-select-best", "--out", O], USAGE, "needs select_best"),
    ("train", "compiled CNF", ["train", "--model", "cnf", "--compile", "--out", O], USAGE, "CNF solves are not compiled"),
    ("train", "EMA decay of 1", ["train", "--ema", "1", "--out", O], USAGE, "ema is a decay in [0, 1)"),
    ("train", "unavailable device", ["train", "--device", "cuda:7", "--out", O], USAGE, "CUDA is not available"),
    ("train", "config with unknown key", ["train", "--config", "{tmp}/unknown.json", "--out", O], USAGE, "unknown key(s) stepz"),
    ("train", "config with wrong type", ["train", "--config", "{tmp}/badtype.json", "--out", O], USAGE, "steps must be int"),
    ("train", "config file missing", ["train", "--config", "{tmp}/nope.json", "--out", O], RUNTIME, "does not exist"),
    ("train", "config not JSON", ["train", "--config", "{tmp}/broken.json", "--out", O], RUNTIME, "is not valid JSON"),
    ("train", "existing run without --force", ["train", *FAST, "--out", "{run}"], USAGE, "is not empty"),
    ("train", "unwritable output directory", ["train", *FAST, "--out", "{tmp}/a_file/sub"], RUNTIME, "cannot write to output directory"),
    ("train", "--config changing a resumed run", ["train", "--resume", "{run}", "--config", "{tmp}/other_lr.json"], USAGE, "changes --lr 0.002 -> 0.5"),
    ("train", "--force with --resume", ["train", "--resume", "{run}", "--force"], USAGE, "--force and --resume contradict"),
    ("train", "--out other than --resume", ["train", "--resume", "{run}", "--out", O], USAGE, "name different directories"),
    ("train", "resume with a model change", ["train", "--resume", "{run}", "--hidden", "64"], USAGE, "changes --hidden 16 -> 64"),
    ("sample", "temperature zero", ["sample", "{run}", "--out", "{tmp}/s.csv", "--temperature", "0"], USAGE, "temperature must be > 0"),
    ("sample", "negative temperature", ["sample", "{run}", "--out", "{tmp}/s.csv", "--temperature", "-1"], USAGE, "temperature must be > 0"),
    ("sample", "zero samples", ["sample", "{run}", "--out", "{tmp}/s.csv", "--n", "0"], USAGE, "--n must be a positive"),
    ("sample", "bad output suffix", ["sample", "{run}", "--out", "{tmp}/s.txt"], USAGE, "must end in .csv or .npy"),
    ("sample", "image output suffix", ["sample", "{img}", "--out", "{tmp}/s.csv"], USAGE, "must end in .npy or .png"),
    ("sample", "existing output file", ["sample", "{run}", "--out", "{tmp}/existing.csv"], USAGE, "exists; choose another --out or pass --force"),
    ("sample", "output in a missing folder", ["sample", "{run}", "--out", "{tmp}/no/s.csv"], RUNTIME, "does not exist"),
    ("sample", "missing run", ["sample", "{tmp}/norun", "--out", "{tmp}/s.csv"], RUNTIME, "does not exist"),
    ("score", "existing output file", ["score", "{run}", "--data", "moons", "--out", "{tmp}/existing.csv"], USAGE, "exists; choose another --out or pass --force"),
    ("score", "missing --data", ["score", "{run}", "--out", "{tmp}/s.csv"], USAGE, "required: --data"),
    ("plot", "not a run directory", ["plot", "{tmp}/a_file"], RUNTIME, "is not a run directory"),
    ("plot", "missing run", ["plot", "{tmp}/norun"], RUNTIME, "is not a run directory"),
    ("-", "unknown verb", ["fly"], USAGE, "invalid choice"),
]  # fmt: skip


@pytest.mark.parametrize("verb, fault, argv, code, words", ROWS, ids=[f"{r[0]}: {r[1]}" for r in ROWS])
def test_bad_input_gives_one_clear_line(good_run, image_run, tmp_path, capsys, monkeypatch, verb, fault, argv, code, words):  # fmt: skip
    monkeypatch.chdir(tmp_path)  # the CIFAR exploit would create ./pwned
    _write_faulty_files(tmp_path)
    np.save(tmp_path / "bad.npy", np.full((2, 1, 8, 8), 300.0))
    np.save(tmp_path / "flat.npy", np.zeros((2, 64)))
    image, _ = image_run
    before = snapshot(good_run), snapshot(image), snapshot(tmp_path)
    argv = [a.format(run=good_run, tmp=tmp_path, img=image) for a in argv]
    got, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("clayflow") and words in lines[0], err
    assert "Traceback" not in err
    assert (
        snapshot(good_run),
        snapshot(image),
        snapshot(tmp_path),
    ) == before  # nothing written, nothing lost
    assert not (tmp_path / "pwned").exists()


# -- checkpoints: every verb that reads one, every way one can be bad ----------------------------


def _spoil(run: Path, fault: str, marker: Path) -> None:
    """Replace both checkpoints of the copied run ``run`` by a ``fault`` version."""
    for name in ("last.pt", "best.pt"):
        path = run / "checkpoints" / name
        data = path.read_bytes()
        payload = torch.load(path, weights_only=True)
        if fault == "truncated":
            path.write_bytes(data[: len(data) // 2])
        elif fault == "corrupt":
            path.write_bytes(b"PK\x03\x04 not really a checkpoint" + data[100:])
        elif fault == "newer format":
            torch.save({**payload, "format_version": 99}, path)
        elif fault == "weights of another model":
            other = clayflow.models.realnvp(2, hidden=7)
            torch.save({**payload, "model": other.state_dict()}, path)
        elif fault == "options no model has":
            payload["model_spec"]["options"]["wings"] = 2
            torch.save(payload, path)
        elif fault == "pickled code":

            class Evil:
                def __reduce__(self):
                    return (Path.touch, (marker,))

            torch.save({**payload, "model": Evil()}, path)
        elif fault == "missing":
            path.unlink()


CHECKPOINT_FAULTS = {
    "truncated": "cannot read checkpoint",
    "corrupt": "cannot read checkpoint",
    "pickled code": "not a clayflow checkpoint: it holds Python objects",  # not torch's advice to load it unsafely
    "newer format": "newer than this clayflow",
    "weights of another model": "do not fit its model 'nsf'",  # the default model on moons' 50,000 rows
    "options no model has": "model cannot be rebuilt: model 'nsf' on vectors has no option(s) ['wings']",
    "missing": "has no checkpoint",
}
READERS = {
    "sample": ["sample", "{run}", "--out", "{tmp}/s.csv"],
    "score": ["score", "{run}", "--data", "moons", "--out", "{tmp}/s.csv"],
    "plot": ["plot", "{run}"],
    "train --resume": ["train", "--resume", "{run}", "--no-progress"],
    "load": None,  # the Python API
}


# A run killed before its first checkpoint has none, and --resume starts it over (test_train.py).
CHECKPOINT_CASES = [
    (v, f) for v in READERS for f in CHECKPOINT_FAULTS if (v, f) != ("train --resume", "missing")
]


@pytest.mark.parametrize("verb, fault", CHECKPOINT_CASES, ids=[f"{v}: {f}" for v, f in CHECKPOINT_CASES])
def test_bad_checkpoints_are_refused_by_every_reader(good_run, tmp_path, capsys, verb, fault):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(good_run, run)
    _spoil(run, fault, marker)
    before = snapshot(run)
    words = CHECKPOINT_FAULTS[fault]
    if verb == "load":
        with pytest.raises(ClayflowError) as info:
            clayflow.load(run)
        assert words in str(info.value)
    else:
        code, _, err = run_cli(capsys, *[a.format(run=run, tmp=tmp_path) for a in READERS[verb]])
        lines = err.strip().splitlines()
        if verb == "train --resume" and fault in ("weights of another model", "options no model has"):
            words = "cannot resume this run"  # the model comes from config.json, and must match
        assert code == RUNTIME and len(lines) == 1 and words in lines[0], err
    assert snapshot(run) == before and not marker.exists()
    assert not (tmp_path / "s.csv").exists()


def _without_best(good_run: Path, run: Path, best_step_back: int) -> int:
    """A copy of ``good_run`` without best.pt whose last.pt records its best evaluation
    ``best_step_back`` steps before its last; returns that best step."""
    shutil.copytree(good_run, run)
    (run / "checkpoints" / "best.pt").unlink()
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    last["best_step"] = last["step"] - best_step_back
    torch.save(last, run / "checkpoints" / "last.pt")
    return last["best_step"]


def test_a_run_whose_best_weights_were_deleted_is_refused_not_read_from_last(good_run, tmp_path, capsys):
    """Without best.pt, last.pt's weights are another model than the one the run reported
    when its best evaluation came earlier: refused by name, and the last weights are used only
    when asked for by file; a resume, which must end with the best weights, is refused before
    it trains. When the last evaluation was the best, last.pt holds the run's own model."""
    run = tmp_path / "run"
    best_step = _without_best(good_run, run, best_step_back=10)
    with pytest.raises(ClayflowError, match=rf"best.pt \(the weights of step {best_step}, best on validation.*is missing"):
        clayflow.load(run)
    code, _, err = run_cli(capsys, "sample", run, "--n", "5", "--out", tmp_path / "s.csv")
    assert code == RUNTIME and err.count("\n") == 1 and "give that file" in err, err
    code, _, err = run_cli(capsys, "sample", run / "checkpoints" / "last.pt", "--n", "5", "--out", tmp_path / "s.csv")
    assert code == 0, err
    before = snapshot(run)  # a resume would train, then fail to load the weights it must end with
    code, _, err = run_cli(capsys, "train", "--resume", run, "--steps", "400", "--no-progress")
    assert code == RUNTIME and "a resumed run could not end with its best weights" in err.strip().splitlines()[-1], err
    assert snapshot(run) == before
    own = tmp_path / "own"
    _without_best(good_run, own, best_step_back=0)
    assert clayflow.load(own).state_dict().keys() == clayflow.load(good_run).state_dict().keys()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_at_last_pt_of_a_run_without_best_pt_is_refused_not_read(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    os.mkfifo(tmp_path / "run" / "checkpoints" / "last.pt")
    code, _, err = run_cli(capsys, "sample", tmp_path / "run", "--n", "3", "--out", tmp_path / "s.csv")
    assert code == RUNTIME and "is a FIFO (named pipe), not a regular file" in err, err


def test_a_file_of_python_objects_is_not_a_checkpoint_and_random_bytes_are_unreadable(tmp_path):
    class Shell:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save(np.zeros(3), tmp_path / "array.pt")  # numpy's array is a global that weights_only refuses
    torch.save({"format_version": 1, "model": Shell()}, tmp_path / "shell.pt")  # a blocked module's function
    torch.save({"format_version": 1, "model": Shell()}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 4)
    for name, global_name in (("array.pt", "numpy"), ("shell.pt", os.name), ("legacy.pt", os.name)):  # posix.system
        with pytest.raises(ClayflowError) as info:
            clayflow.load(tmp_path / name)
        assert f"not a clayflow checkpoint: it holds Python objects ({global_name}" in str(info.value)
        assert "weights_only" not in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "table.pt").write_text("count_a,height\n1,2\n")  # 'c' reads as pickle's GLOBAL opcode
    (tmp_path / "dotted.pt").write_text("cfoo.bar\nbaz\n")  # ... and names 'foo.bar.baz'
    for name in ("noise.pt", "table.pt", "dotted.pt"):
        with pytest.raises(ClayflowError) as info:
            clayflow.load(tmp_path / name)
        assert str(info.value).startswith(f"cannot read checkpoint {tmp_path / name} (truncated, corrupt"), info.value
        assert "weights_only" not in str(info.value) and "safe_globals" not in str(info.value)
        assert "\n" not in str(info.value)


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "clayflow.cli.main", "train", "--data", str(tmp_path / "x.csv")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


def test_force_replaces_an_existing_output_file(good_run, tmp_path, capsys):
    (tmp_path / "s.csv").write_text("old\n")
    code, _, err = run_cli(capsys, "sample", good_run, "--n", "5", "--out", tmp_path / "s.csv", "--force")
    assert code == 0 and len((tmp_path / "s.csv").read_text().splitlines()) == 6, err


def test_huge_values_train_to_a_finite_likelihood(tmp_path, capsys):
    """Columns of scale 1e30 are standardised inside the flow; the NLL stays in data units."""
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "huge.csv", rng.normal(size=(300, 2)) * [1e30, 1.0], delimiter=",")
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "huge.csv", *FAST, "--out", tmp_path / "r")
    assert code == 0, err
    test_nll = json.loads((tmp_path / "r/results.json").read_text())["test_nll"]
    assert 60 < test_nll < 80, test_nll  # about log(1e30) = 69 nats from the huge column


# -- a failed write while training -------------------------------------------------------------


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    from clayflow.train import checkpoint

    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, file, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:  # last.pt of steps 0, 10 and 20 are written, then the disk is full
            file.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_fills)
    run = tmp_path / "run"
    argv = ["train", "--steps", "40", "--eval-every", "10", "--checkpoint-every", "10", "--hidden", "16",
            "--layers", "2", "--no-plots", "--no-progress", "--no-select-best", "--out", run]  # fmt: skip
    code, _, err = run_cli(capsys, *argv)
    line = err.strip().splitlines()[-1]
    assert code == RUNTIME and "cannot write the checkpoint at step 30 (No space left on device)" in line, err
    assert "kept the last good checkpoint (step 20)" in line and f"--resume {run}" in line
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["step"] == 20
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no half-written file left behind
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # and it resumes


def test_the_library_loads_files_without_unpickling_code():
    """Every ``torch.load`` is ``weights_only=True`` and every ``np.load`` ``allow_pickle=False``."""
    source = Path(clayflow.__file__).parent
    calls = [
        line
        for path in source.rglob("*.py")
        for line in path.read_text().splitlines()
        if ("torch.load(" in line or "np.load(" in line) and "``" not in line
    ]
    assert len(calls) >= 3, calls
    for line in calls:
        assert "weights_only=True" in line or "allow_pickle=False" in line, line
