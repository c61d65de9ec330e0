"""The CLI: the happy path, and every bad input giving one line, a non-zero exit, no change."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clayflow.cli.main import main

FAST = [
    "--steps",
    "30",
    "--hidden",
    "16",
    "--layers",
    "2",
    "--eval-every",
    "10",
    "--checkpoint-every",
    "10",
    "--no-plots",
]


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(path: Path) -> dict:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *FAST, "--out", str(run)]) == 0
    return run


def test_train_sample_score_plot(good_run, tmp_path, capsys):
    assert json.loads((good_run / "results.json").read_text())["steps"] == 30
    code, out, _ = run_cli(
        capsys, "sample", good_run, "--n", 50, "--out", tmp_path / "s.csv", "--temperature", 0.7
    )
    assert code == 0 and "wrote 50 samples" in out
    samples = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert samples.shape == (50, 2)
    code, out, _ = run_cli(
        capsys, "score", good_run, "--data", tmp_path / "s.csv", "--out", tmp_path / "scores.csv"
    )
    scores = np.loadtxt(tmp_path / "scores.csv", delimiter=",", skiprows=1)
    assert code == 0 and scores.shape == (50, 3) and np.isfinite(scores).all()
    flow = __import__("clayflow").load(good_run)
    expected = flow.log_prob(torch.as_tensor(samples, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(scores[:, 1], expected, atol=1e-4)
    code, out, _ = run_cli(capsys, "plot", good_run)
    assert code == 0 and all(
        (good_run / "plots" / f).exists() for f in ("loss.png", "samples.png", "density.png")
    )


def test_config_file_round_trip_and_flags_override(good_run, tmp_path, capsys):
    config = json.loads((good_run / "config.json").read_text())
    assert config["steps"] == 30 and config["hidden"] == 16
    (tmp_path / "c.json").write_text(json.dumps(config))
    code, _, err = run_cli(
        capsys, "train", "--config", tmp_path / "c.json", "--steps", 20, "--no-plots", "--out", tmp_path / "r"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "r/config.json").read_text()) == {**config, "steps": 20}


def test_tabular_training_with_plots(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 2]]) + 100
    np.savetxt(tmp_path / "t.csv", x, delimiter=",", header="a,b,c", comments="")
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "t.csv", *FAST[:-1], "--out", tmp_path / "r")
    assert code == 0, err
    assert (tmp_path / "r/plots/marginals.png").exists() and (tmp_path / "r/plots/pairs.png").exists()
    run_cli(capsys, "sample", tmp_path / "r", "--n", 5, "--out", tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "a,b,c"


def _files(tmp: Path) -> dict:
    (tmp / "empty.csv").write_text("")
    (tmp / "text.csv").write_text("1,2\n3,abc\n" * 10)
    (tmp / "nan.csv").write_text("1,2\n3,nan\n" * 10)
    (tmp / "three.csv").write_text("1,2,3\n" * 10)
    (tmp / "a_file").write_text("x")
    (tmp / "unknown.json").write_text('{"stepz": 10}')
    (tmp / "badtype.json").write_text('{"steps": "many"}')
    (tmp / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    return {}


def _evil_checkpoint(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"format_version": 1, "model_spec": {}, "model": Evil()}, path)


CASES = [
    # (name, argv with {run} {tmp}, expected code, words in the message)
    ("unknown model", ["train", "--model", "glowz", "--out", "{tmp}/o"], 1, "unknown model 'glowz'"),
    ("unknown dataset", ["train", "--data", "moonz", "--out", "{tmp}/o"], 1, "unknown dataset 'moonz'"),
    ("missing data file", ["train", "--data", "{tmp}/nope.csv", "--out", "{tmp}/o"], 1, "does not exist"),
    ("empty data file", ["train", "--data", "{tmp}/empty.csv", "--out", "{tmp}/o"], 1, "is empty"),
    (
        "non-numeric cell",
        ["train", "--data", "{tmp}/text.csv", "--out", "{tmp}/o"],
        1,
        "'abc' is not a number",
    ),
    ("nan value", ["train", "--data", "{tmp}/nan.csv", "--out", "{tmp}/o"], 1, "is nan"),
    ("zero steps", ["train", "--steps", "0"], 1, "steps must be > 0"),
    ("negative lr", ["train", "--lr", "-1"], 1, "lr must be > 0"),
    ("non-integer steps", ["train", "--steps", "abc"], 2, "invalid int value"),
    (
        "option the model lacks",
        ["train", "--model", "nice", "--batch-norm", "--out", "{tmp}/o"],
        1,
        "has no option --batch-norm",
    ),
    ("config unknown key", ["train", "--config", "{tmp}/unknown.json"], 1, "unknown key(s) stepz"),
    ("config wrong type", ["train", "--config", "{tmp}/badtype.json"], 1, "steps must be int"),
    ("existing run without --force", ["train", *FAST, "--out", "{run}"], 1, "is not empty"),
    (
        "unwritable output directory",
        ["train", *FAST, "--out", "{tmp}/a_file/sub"],
        1,
        "cannot write to output directory",
    ),
    (
        "resume with a model change",
        ["train", "--resume", "{run}", "--hidden", "64"],
        1,
        "cannot change --hidden",
    ),
    (
        "wrong column count",
        ["score", "{run}", "--data", "{tmp}/three.csv", "--out", "{tmp}/s.csv"],
        1,
        "has 3 columns but the model was trained on 2",
    ),
    (
        "temperature zero",
        ["sample", "{run}", "--out", "{tmp}/s.csv", "--temperature", "0"],
        1,
        "temperature must be > 0",
    ),
    ("bad output suffix", ["sample", "{run}", "--out", "{tmp}/s.txt"], 1, "must end in .csv or .npy"),
    ("output in missing dir", ["sample", "{run}", "--out", "{tmp}/no/s.csv"], 1, "does not exist"),
    (
        "corrupt checkpoint",
        ["sample", "{tmp}/corrupt.pt", "--out", "{tmp}/s.csv"],
        1,
        "cannot read checkpoint",
    ),
    ("missing run", ["sample", "{tmp}/norun", "--out", "{tmp}/s.csv"], 1, "does not exist"),
    ("unknown verb", ["fly"], 2, "invalid choice"),
]


@pytest.mark.parametrize("name, argv, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(good_run, tmp_path, capsys, name, argv, code, words):
    _files(tmp_path)
    before = snapshot(good_run)
    argv = [a.format(run=good_run, tmp=tmp_path) for a in argv]
    got, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("clayflow") and words in lines[0], err
    assert "Traceback" not in err
    assert snapshot(good_run) == before
    assert not (tmp_path / "o").exists(), "a failed run must not leave an output directory"


def test_checkpoint_loading_never_executes_pickled_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    _evil_checkpoint(tmp_path / "evil.pt", marker)
    code, _, err = run_cli(capsys, "sample", tmp_path / "evil.pt", "--out", tmp_path / "s.csv")
    assert code == 1 and "cannot read checkpoint" in err and not marker.exists()


def test_newer_checkpoint_format_is_refused(good_run, tmp_path, capsys):
    payload = torch.load(good_run / "checkpoints/last.pt", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "new.pt")
    code, _, err = run_cli(capsys, "sample", tmp_path / "new.pt", "--out", tmp_path / "s.csv")
    assert code == 1 and "newer than this clayflow" in err


def test_truncated_checkpoint_is_refused(good_run, tmp_path, capsys):
    data = (good_run / "checkpoints/last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(
        capsys, "score", tmp_path / "cut.pt", "--data", "moons", "--out", tmp_path / "s.csv"
    )
    assert code == 1 and "cannot read checkpoint" in err


def test_checkpoint_of_another_model_is_refused(good_run, tmp_path, capsys):
    payload = torch.load(good_run / "checkpoints/last.pt", weights_only=True)
    payload["model_spec"]["options"]["hidden"] = 99
    torch.save(payload, tmp_path / "other.pt")
    code, _, err = run_cli(capsys, "sample", tmp_path / "other.pt", "--out", tmp_path / "s.csv")
    assert code == 1 and "do not fit its model 'realnvp'" in err
    payload["model_spec"]["name"] = "nice"
    payload["model_spec"]["options"]["scale_bound"] = "tanh"  # NICE has no scale bound
    torch.save(payload, tmp_path / "other.pt")
    code, _, err = run_cli(capsys, "sample", tmp_path / "other.pt", "--out", tmp_path / "s.csv")
    assert code == 1 and "checkpoint's model cannot be rebuilt: model 'nice' on vectors has no option" in err


def test_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "clayflow.cli.main", "train", "--data", str(tmp_path / "x.csv")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


def test_help_texts_explain_themselves(capsys):
    for verb in ("train", "sample", "score", "plot"):
        code, out, _ = run_cli(capsys, verb, "--help")
        assert code == 0 and "example" in out
    from dataclasses import fields

    from clayflow.train.config import TrainConfig, field_help

    assert set(field_help()) == {f.name for f in fields(TrainConfig)}  # every option has a help text
    _, out, _ = run_cli(capsys, "train", "--help")
    assert "--batch-size" in out and "(default 512; images 64)" in out and "--resume" in out


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from test_image_data import write_images

    folder = write_images(tmp_path_factory.mktemp("imgs") / "faces", 30, size=(8, 8))
    run = folder.parent / "run"
    argv = ["train", "--data", f"images:{folder}", "--steps", "12", "--hidden", "8", "--depth", "1"]
    assert main([*argv, "--batch-size", "8", "--eval-every", "6", "--out", str(run)]) == 0
    return run, folder


def test_image_run_trains_samples_scores_and_plots(image_run, tmp_path, capsys):
    run, folder = image_run
    results = json.loads((run / "results.json").read_text())
    assert results["test_bpd"] == pytest.approx(results["test_nll"] / (64 * np.log(2)))
    plots = ("samples.png", "data.png", "reconstructions.png", "interpolation.png")
    assert all((run / "plots" / f).exists() for f in plots)  # with only 3 test images
    code, _, err = run_cli(
        capsys, "sample", run, "--n", "5", "--out", tmp_path / "s.npy", "--temperature", "0.7"
    )
    samples = np.load(tmp_path / "s.npy")
    assert code == 0 and samples.shape == (5, 1, 8, 8) and samples.dtype == np.uint8, err
    assert run_cli(capsys, "sample", run, "--n", "9", "--out", tmp_path / "grid.png")[0] == 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(capsys, "score", run, "--data", f"images:{folder}", "--out", tmp_path / "sc.csv")
    scores = np.loadtxt(tmp_path / "sc.csv", delimiter=",", skiprows=1)
    assert code == 0 and scores.shape == (30, 3), err
    np.testing.assert_allclose(scores[:, 2], -scores[:, 1] / (64 * np.log(2)))
    np.save(tmp_path / "s2.npy", samples)
    code, _, err = run_cli(capsys, "score", run, "--data", tmp_path / "s2.npy", "--out", tmp_path / "s2.csv")
    assert code == 0, err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "{run}", "--out", "{tmp}/s.csv"], "must end in .npy or .png"),
        (
            ["score", "{run}", "--data", "moons", "--out", "{tmp}/s.csv"],
            "examples of shape (2,) but the model",
        ),
        (["score", "{run}", "--data", "{tmp}/bad.npy", "--out", "{tmp}/s.csv"], "integer levels in [0, 255]"),
        (
            ["score", "{run}", "--data", "{tmp}/flat.npy", "--out", "{tmp}/s.csv"],
            "numeric (N, C, H, W) array",
        ),
        (["train", "--data", "digits", "--layers", "3"], "on image data has no option --layers"),
        (
            ["train", "--data", "digits", "--model", "nice"],
            "does not support image data; use one of: realnvp",
        ),
        (
            ["train", "--data", "digits", "--scales", "4"],
            "divisible by 8, leaving at least 2 pixels; got 8x8",
        ),
    ],
)
def test_image_bad_input_gives_one_clear_line(image_run, tmp_path, capsys, argv, words):
    run, _ = image_run
    np.save(tmp_path / "bad.npy", np.full((2, 1, 8, 8), 300.0))
    np.save(tmp_path / "flat.npy", np.zeros((2, 64)))
    before = snapshot(run)
    code, _, err = run_cli(capsys, *[a.format(run=run, tmp=tmp_path) for a in argv])
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and words in lines[0], err
    assert snapshot(run) == before
