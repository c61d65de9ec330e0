"""Inputs that would be silently misread (issue 14, "Nothing lost").

Scored columns are matched by name, flows refuse events of the wrong shape and handle empty
batches, and training data with no density (constant or linearly dependent columns) is
refused while a column that varies at any scale is accepted.
"""

import numpy as np
import pytest
import torch

from clayflow.cli.main import main
from clayflow.data import standardization
from clayflow.errors import ClayflowError
from clayflow.models import ModelSpec, build
from test_cli import FAST, run_cli, snapshot

# -- score: columns by name ---------------------------------------------------------------------

NAMES = ["a", "b", "c"]


def _rows(n: int, seed: int) -> np.ndarray:
    """Three columns of very different scales, so any swap changes the scores a lot."""
    rng = np.random.default_rng(seed)
    return np.c_[rng.normal(0, 1, n), rng.normal(100, 10, n), rng.normal(-5, 0.1, n)]


def _write_csv(path, values, header=None):
    text = (",".join(header) + "\n" if header is not None else "") + "".join(
        ",".join(f"{v:.9g}" for v in row) + "\n" for row in values
    )
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def named_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("named")
    data = _write_csv(folder / "train.csv", _rows(200, 0), NAMES)
    assert main(["train", *FAST, "--data", str(data), "--out", str(folder / "run")]) == 0
    return folder / "run"


def _score(capsys, run, data, out):
    code, _, err = run_cli(capsys, "score", run, "--data", data, "--out", out)
    assert code == 0, err
    return np.loadtxt(out, delimiter=",", skiprows=1)[:, 1]


@pytest.mark.parametrize(
    "header, order",
    [
        (["c", "a", "b"], [2, 0, 1]),  # reordered: matched by name
        (["b", "a", "c"], [1, 0, 2]),
        (None, [0, 1, 2]),  # no header: by position, as trained
    ],
)
def test_score_matches_columns_by_name(named_run, tmp_path, capsys, header, order):
    rows = _rows(30, 1)
    expected = _score(capsys, named_run, _write_csv(tmp_path / "ref.csv", rows, NAMES), tmp_path / "r.csv")
    shuffled = _write_csv(tmp_path / "new.csv", rows[:, order], header)
    np.testing.assert_allclose(_score(capsys, named_run, shuffled, tmp_path / "s.csv"), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "header, words",
    [
        (["a", "b"], "no column named 'c'"),
        (["a", "b", "c", "d"], "column 'd' the model was not trained on"),
        (["a", "x", "c"], "no column named 'b' and has column 'x'"),
        (["a", "a", "c"], "names 'a' more than once"),
        (["c", "b", "a", "a"], "names 'a' more than once"),
    ],
)
def test_score_refuses_missing_extra_or_duplicated_names(named_run, tmp_path, capsys, header, words):
    data = _write_csv(tmp_path / "new.csv", _rows(30, 1)[:, [i % 3 for i in range(len(header))]], header)
    before = snapshot(named_run), snapshot(tmp_path)
    code, _out, err = run_cli(capsys, "score", named_run, "--data", data, "--out", tmp_path / "s.csv")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("clayflow: error: "), err
    assert words in lines[0] and "trained on a, b, c" in lines[0], lines[0]
    assert (snapshot(named_run), snapshot(tmp_path)) == before


def test_named_file_on_model_without_names_is_scored_by_position(good_run, tmp_path, capsys):
    rows = np.random.default_rng(2).normal(size=(20, 2))
    plain = _score(capsys, good_run, _write_csv(tmp_path / "plain.csv", rows), tmp_path / "p.csv")
    named = _score(capsys, good_run, _write_csv(tmp_path / "named.csv", rows, ["y", "x"]), tmp_path / "n.csv")
    np.testing.assert_array_equal(named, plain)
    swapped = _score(capsys, good_run, _write_csv(tmp_path / "swap.csv", rows[:, ::-1]), tmp_path / "w.csv")
    assert not np.allclose(swapped, plain)  # the order matters to this model


# -- Flow: event shapes and empty batches ------------------------------------------------------

SPECS = {
    "realnvp": ModelSpec("realnvp", [2], {"hidden": 8, "layers": 2}, True),
    "nice": ModelSpec("nice", [3], {"hidden": 8, "layers": 2}, True),
    "glow": ModelSpec("glow", [2], {"hidden": 8, "layers": 2}),
    "cnf": ModelSpec("cnf", [2], {"hidden": 8, "augment": 1, "blocks": 2, "batch_norm": True}),
    "cnf+actnorm": ModelSpec("cnf", [2], {"hidden": 8, "blocks": 2, "actnorm": True}),
    "realnvp_image": ModelSpec("realnvp", [1, 4, 4], {"hidden": 8, "depth": 1, "batch_norm": True}, levels=4),
    "glow_image": ModelSpec("glow", [1, 4, 4], {"hidden": 8, "layers": 1}, levels=4),
    "cnf_image": ModelSpec("cnf", [1, 4, 4], {"hidden": 8, "augment": 1}, levels=4),
}


def _wrong_shapes(shape):
    """Events that differ from ``shape`` in size or rank, batch of 5."""
    if len(shape) == 1:
        return [(5, 1), (5, shape[0] + 1), (5, shape[0], 1), (shape[0],)]
    return [(5, 1, 4, 3), (5, 2, 4, 4), (5, 16), (5, 1, 4, 4, 1)]


@pytest.mark.parametrize("name", SPECS)
def test_wrong_event_shape_is_refused(name):
    spec = SPECS[name]
    flow = build(spec).eval()
    shape = tuple(spec.event_shape)
    assert tuple(flow.event_shape) == shape
    for wrong in _wrong_shapes(shape):
        x = torch.rand(wrong) * 3
        one_event = wrong == shape  # log_prob takes one event, as torch.distributions does; forward a batch
        for call in (flow.forward,) if one_event else (flow.log_prob, flow.forward, flow.bits_per_dim):
            with pytest.raises(ValueError, match=rf"\(B, {', '.join(map(str, shape))}\).*{tuple(wrong)}"):
                call(x)
            with pytest.raises(ClayflowError):  # the CLI's one-line error, too
                call(x)
        if one_event:
            assert flow.log_prob(x).shape == flow.bits_per_dim(x).shape == ()
    with pytest.raises(ValueError, match="latent"):
        flow.inverse(torch.randn(5, flow.base.event_shape.numel() + 1))


def test_flows_built_without_build_infer_their_event_shape():
    from clayflow import models
    from clayflow.core import Compose, Flow, StandardNormal
    from clayflow.transforms import Augment, Squeeze

    direct = {
        (2,): models.realnvp(2, layers=2, hidden=8),
        (3,): models.nice(3, layers=2, hidden=8),
        (1, 4, 4): models.realnvp_image((1, 4, 4), 4, hidden=8, depth=1),  # multi-scale: latent (16,)
        (1, 8, 8): models.glow_image((1, 8, 8), 4, hidden=8, layers=1),
    }
    for shape, flow in direct.items():
        assert tuple(flow.event_shape) == shape
        with pytest.raises(ValueError, match="data have shape"):
            flow.log_prob(torch.rand(5, *shape[:-1], shape[-1] - 1))
    with pytest.raises(ValueError, match=r"\(B, 2\), got a tensor of shape \(5, 1\)"):
        models.realnvp(2).log_prob(torch.randn(5, 1))  # the issue's example: was 5 numbers
    assert Flow(Compose(Squeeze()), StandardNormal((4, 1, 1))).event_shape is None  # unknown
    augmented = Flow(Augment(3), StandardNormal(5))
    assert augmented.event_shape is None and augmented.log_prob(torch.randn(4, 2)).shape == (4,)
    with pytest.raises(ValueError, match="latent"):
        augmented.inverse(torch.randn(4, 2))


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_empty_batches_give_empty_results(name, mode):
    spec = SPECS[name]
    flow = getattr(build(spec), mode)()
    shape = tuple(spec.event_shape)
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    assert flow.log_prob(torch.zeros(0, *shape)).shape == (0,)
    assert flow.bits_per_dim(torch.zeros(0, *shape)).shape == (0,)
    z, logabsdet = flow(torch.zeros(0, *shape))
    assert z.shape == (0, *flow.base.event_shape) and logabsdet.shape == (0,)
    assert flow.sample(0).shape == (0, *shape)
    x, log_prob = flow.sample_and_log_prob(0)
    assert x.shape == (0, *shape) and log_prob.shape == (0,)
    after = flow.state_dict()  # no ActNorm init or batch-norm statistics from an empty batch
    assert all(torch.equal(after[k], v) for k, v in state.items())
    x = (torch.rand(3, *shape) * 3).floor()  # image models take integer levels
    assert flow.log_prob(x).shape == (3,) and torch.isfinite(flow.log_prob(x)).all()


# -- training data with no density ----------------------------------------------------------------


def _table(*columns):
    return torch.tensor(np.stack(columns, 1), dtype=torch.float32)


def test_tiny_but_varying_column_is_accepted():
    rng = np.random.default_rng(0)
    x = _table(rng.normal(size=500), 1e-15 * rng.normal(size=500), 1e-30 * rng.normal(size=500) + 1e-29)
    mean, std = standardization(x)
    assert torch.all(std > 0) and torch.isfinite((x - mean) / std).all()
    assert standardization(x * 1e20)[1].gt(0).all()


COMBINATION = "is a linear combination of"


@pytest.mark.parametrize(
    "make, names, words",
    [
        (lambda a, b, c: (a, b, a), None, "column 3 is a linear combination of column 1;"),
        (lambda a, b, c: (a, b, a), ["a", "b", "copy"], f"column 3 (copy) {COMBINATION} column 1 (a);"),
        (lambda a, b, c: (a, a + 2 * b, b), list("axb"), f"column 3 (b) {COMBINATION} columns 1, 2 (a, x);"),
        (lambda a, b, c: (a, b, c, 3 * a - b + 7), None, "column 4 is a linear combination of columns 1, 2;"),
        (lambda a, b, c: (1e-15 * a, b, 2e-15 * a), None, "column 3 is a linear combination of column 1;"),
        (lambda a, b, c: (a + 1000, b, a + b), None, "column 3 is a linear combination of columns 1, 2;"),
        (lambda a, b, c: (a, np.full_like(a, 7.0), b), ["a", "k", "b"], "column(s) 2 (k) are constant"),
        (lambda a, b, c: (a, np.zeros_like(a), b), None, "column(s) 2 are constant"),
    ],
)
def test_training_data_without_density_is_refused(make, names, words):
    rng = np.random.default_rng(1)
    x = _table(*make(*rng.normal(size=(3, 400))))
    with pytest.raises(ClayflowError, match="drop") as info:
        standardization(x, names)
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_correlated_but_noisy_columns_are_accepted():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 5000))
    x = _table(a, b, a + b + 1e-4 * rng.normal(size=5000), 1e6 + rng.normal(size=5000))
    _mean, std = standardization(x)
    assert torch.all(std > 0)


def test_train_refuses_duplicated_columns_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 100))
    data = _write_csv(tmp_path / "dup.csv", np.c_[a, b, a], ["a", "b", "a_again"])
    code, _, err = run_cli(capsys, "train", *FAST, "--data", data, "--out", tmp_path / "run")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "column 3 (a_again) is a linear combination of column 1 (a)" in lines[0], err
    assert not (tmp_path / "run").exists()


# -- the run's own data, found from anywhere; labels and seeds checked before anything is written -----


def test_a_run_trained_on_a_relative_path_finds_its_data_from_another_folder(tmp_path, capsys, monkeypatch):
    """``config.json`` keeps the name ``train.csv`` as given; from another folder, beside a
    different ``train.csv``, score must still calibrate on the run's own validation split and plot draw its own rows (the
    data fingerprint tells the two files apart), and a folder with only other data is refused."""
    project = tmp_path / "project"
    (project / "runs").mkdir(parents=True)
    _write_csv(project / "train.csv", _rows(200, 0), NAMES)
    monkeypatch.chdir(project)
    assert main(["train", *FAST, "--data", "train.csv", "--out", "runs/r"]) == 0
    rows = _write_csv(tmp_path / "rows.csv", _rows(40, 1), NAMES)
    capsys.readouterr()
    assert main(["score", "runs/r", "--data", str(rows), "--fpr", "0.1", "--out", str(tmp_path / "here.csv")]) == 0
    threshold = capsys.readouterr().out.split("threshold ")[1].split()[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _write_csv(elsewhere / "train.csv", _rows(200, 2), NAMES)  # same name and size, other rows
    monkeypatch.chdir(elsewhere)
    run = project / "runs" / "r"
    assert main(["score", str(run), "--data", str(rows), "--fpr", "0.1", "--out", str(tmp_path / "there.csv")]) == 0
    assert f"threshold {threshold} " in capsys.readouterr().out
    assert main(["plot", str(run), "--columns", "1"]) == 0  # from the run's folder, beside the other train.csv
    (elsewhere / "train.csv").write_text("not a table\n")  # a file of that name that cannot be read is passed over
    checkpoint = run / "checkpoints" / "best.pt"  # a file as RUN (the fingerprint: its own, as last.pt's)
    assert main(["score", str(checkpoint), "--data", str(rows), "--fpr", "0.1", "--out", str(tmp_path / "file.csv")]) == 0
    assert f"threshold {threshold} " in capsys.readouterr().out
    _write_csv(elsewhere / "train.csv", _rows(200, 2), NAMES)
    (project / "train.csv").write_text((elsewhere / "train.csv").read_text())  # the run's data changed
    for which in (run, checkpoint):
        code, _, err = run_cli(capsys, "score", which, "--data", rows, "--fpr", "0.1", "--out", tmp_path / "x.csv")
        assert code == 1 and "was trained on other data than" in err and "same size, other values" in err, err
        assert not (tmp_path / "x.csv").exists()
    code, _, err = run_cli(capsys, "plot", run)  # plot draws the run's data: refused as score, not redrawn
    assert code == 1 and "was trained on other data than" in err and "same size, other values" in err, err
    saved = torch.load(checkpoint, weights_only=True)  # a best.pt of before 2026-12-03: last.pt's fingerprint
    del saved["data_fingerprint"]
    torch.save(saved, checkpoint)
    code, _, err = run_cli(capsys, "score", checkpoint, "--data", rows, "--fpr", "0.1", "--out", tmp_path / "x.csv")
    assert code == 1 and "same size, other values" in err, err
    (project / "train.csv").unlink()
    monkeypatch.chdir(tmp_path)
    (elsewhere / "train.csv").unlink()
    code, _, err = run_cli(capsys, "verify", run)
    assert code == 1 and "which is neither here" in err and err.count("\n") == 1


def test_a_run_trained_on_a_relative_image_folder_finds_it_from_another_folder(tmp_path, capsys, monkeypatch):
    """``--data images:shots`` is kept as given; verify and plot from elsewhere find the folder
    beside the run (as a table file is found), and without it name the folder in one line."""
    from test_image_data import write_images

    project = tmp_path / "project"
    project.mkdir()
    write_images(project / "shots", 30, size=(8, 8))
    monkeypatch.chdir(project)
    argv = ["train", "--data", "images:shots", "--steps", "4", "--hidden", "8", "--depth", "1", "--batch-size", "8"]
    assert main([*argv, "--no-plots", "--out", "runs/r"]) == 0
    monkeypatch.chdir(tmp_path)
    run = project / "runs" / "r"
    code, out, err = run_cli(capsys, "plot", run)
    assert code == 0 and "plots:" in out, err
    (project / "shots").rename(project / "moved")
    code, _, err = run_cli(capsys, "plot", run)
    assert code == 1 and "was trained on the folder 'images:shots', which is neither here" in err, err
    assert err.count("\n") == 1


def test_labels_other_than_0_and_1_are_refused_before_anything_is_written(named_run, tmp_path, capsys):
    rows = _write_csv(tmp_path / "rows.csv", _rows(6, 1), NAMES)
    for values, words in (([1, 0, 1, 0, 1.9, -0.7], "not -0.7, 1.9"), ([1] * 6, "every label is 1")):
        labels = tmp_path / "labels.csv"
        np.savetxt(labels, values)
        code, _, err = run_cli(capsys, "score", named_run, "--data", rows, "--labels", labels, "--out", tmp_path / "s.csv")
        assert code == 1 and words in err and not (tmp_path / "s.csv").exists(), err
    code, _, err = run_cli(capsys, "score", named_run, "--data", rows, "--labels", rows, "--out", tmp_path / "s.csv")
    assert code == 1 and "has 3 columns; give the labels as one column" in err


def test_an_empty_file_of_examples_and_a_seed_out_of_range_get_one_line(named_run, tmp_path, capsys):
    images = tmp_path / "images"
    assert main(["train", "--data", "digits", "--steps", "2", "--hidden", "8", "--depth", "1", "--no-plots",
                 "--out", str(images)]) == 0  # fmt: skip
    capsys.readouterr()
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 1, 8, 8), np.float32))
    for command in (["score", images, "--data", empty, "--out", tmp_path / "s.csv"],
                    ["verify", images, "--data", empty], ["explain", images, "--data", empty]):  # fmt: skip
        code, _, err = run_cli(capsys, *command)
        assert code == 1 and err == f"clayflow: error: {empty} holds no examples\n", err
    for command in (["verify"], ["explain"], ["sample", "--out", tmp_path / "x.csv"]):
        for seed in ("-1", str(2**64)):
            code, _, err = run_cli(capsys, *command[:1], named_run, *command[1:], "--seed", seed)
            assert code == 2 and "--seed must be in [0, 2**64 - 1]" in err and err.count("\n") == 1, (command, err)
    assert not (tmp_path / "x.csv").exists()
