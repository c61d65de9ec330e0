"""The CLI: the happy path, and every bad input giving one line, a non-zero exit, no change."""

import csv
import hashlib
import json
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


def test_help_texts_explain_themselves(capsys):
    for verb in ("train", "sample", "score", "plot"):
        code, out, _ = run_cli(capsys, verb, "--help")
        assert code == 0 and "example" in out
    from dataclasses import fields

    from clayflow.train.config import TrainConfig, field_help

    assert set(field_help()) == {f.name for f in fields(TrainConfig)}  # every option has a help text
    _, out, _ = run_cli(capsys, "train", "--help")
    flat = " ".join(out.split())  # argparse wraps help texts at the terminal's width
    assert "--batch-size" in out and "(default 512; images and tables under 5,000 rows 64)" in flat and "--resume" in out


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
    with (tmp_path / "sc.csv").open() as f:  # each row names its image file
        header, *lines = list(csv.reader(f))
    assert code == 0 and header == ["file", "log_prob", "bits_per_dim"] and len(lines) == 30, err
    assert [line[0] for line in lines] == sorted(p.name for p in folder.iterdir())
    scores = np.array([line[1:] for line in lines], dtype=float)
    np.testing.assert_allclose(scores[:, 1], -scores[:, 0] / (64 * np.log(2)), rtol=1e-6)
    np.save(tmp_path / "s2.npy", samples)
    code, _, err = run_cli(capsys, "score", run, "--data", tmp_path / "s2.npy", "--out", tmp_path / "s2.csv")
    assert code == 0, err
    code, _, err = run_cli(capsys, "score", run, "--data", tmp_path / "s2.npy", "--fpr", "0.1", "--out", tmp_path / "s3.npy")
    array = np.load(tmp_path / "s3.npy")  # log_prob, bits_per_dim, score, flag
    assert code == 0 and array.shape == (len(samples), 4) and set(np.unique(array[:, 3])) <= {0.0, 1.0}, err
    np.testing.assert_allclose(array[:, 1], -array[:, 0] / (64 * np.log(2)), rtol=1e-6)
