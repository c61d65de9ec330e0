"""Tables as users have them: the fitted start (an untrained flow is the Gaussian fit),
discrete columns, and defaults chosen from the data's size."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import clayflow
from clayflow import transforms as T
from clayflow.cli.main import main
from clayflow.data import Dataset, load_dataset
from clayflow.data.discrete import MAX_DISCRETE_VALUES, discrete_columns
from clayflow.errors import UsageError
from clayflow.train import TrainConfig, train
from clayflow.train.evaluate import evaluate_nll
from clayflow.train.selection import BestModel
from clayflow.train.setup import SMALL_TABLE_ROWS, build_flow, data_defaults, input_noise_factor


def _table(values: np.ndarray, columns=None) -> Dataset:
    t = torch.as_tensor(values, dtype=torch.float32)
    return Dataset("t", t[:-4], t[-4:-2], t[-2:], columns)


def test_whitening_fit_gives_zero_mean_identity_covariance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 4, generator=g, dtype=torch.float64) + 3
    whitening = T.Whitening(4).double()
    whitening.fit(x)
    z, logabsdet = whitening(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.T @ z / len(z), torch.eye(4, dtype=torch.float64))
    assert torch.allclose(logabsdet, -0.5 * torch.logdet(torch.cov(x.T, correction=0)).expand(300))


def test_power_transform_fit_pulls_in_a_long_tail():
    g = torch.Generator().manual_seed(0)
    skewed = torch.randn(2000, 1, generator=g).exp()  # log-normal: long right tail
    standardized = (skewed - skewed.mean()) / skewed.std()
    power = T.PowerTransform(1)
    power.fit(standardized)
    z = power(standardized)[0].detach()
    assert power.power.item() < 0.5
    assert abs(stats.skew(z.squeeze().numpy())) < 0.2 * abs(stats.skew(standardized.squeeze().numpy()))


def test_untrained_flow_is_the_full_covariance_gaussian_fit():
    """Without the power transform, the untrained flow's log-density is the Gaussian maximum
    likelihood fit to the training rows, in the data's own units."""
    config = TrainConfig(data="wine", power_transform=False)
    data = load_dataset("wine")
    flow, _ = build_flow(data_defaults(config, data), data)
    train_rows = data.train.double().numpy()
    gaussian = stats.multivariate_normal(train_rows.mean(0), np.cov(train_rows.T, bias=True))
    expected = gaussian.logpdf(data.test.double().numpy())
    got = flow.double().eval().log_prob(data.test.double()).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_the_untrained_flow_is_a_candidate_for_the_best_model(tmp_path, monkeypatch, capsys):
    """When every trained step is worse on validation, the run reports the fitted start,
    whose validation NLL is the first metrics row (and clayflow train warns of it)."""
    from clayflow.train import loop

    real = loop.evaluate_log_probs
    worse = {"calls": 0}

    def worse_after_step_0(flow, x, loader_options=None, processes=None):
        worse["calls"] += 1
        return real(flow, x) - (0.0 if worse["calls"] == 1 else 1.0)

    monkeypatch.setattr(loop, "evaluate_log_probs", worse_after_step_0)
    run = tmp_path / "run"
    result = train(TrainConfig(data="wine", steps=30), run, progress=False)
    with (run / "metrics.csv").open() as f:
        metrics = list(csv.DictReader(f))
    assert metrics[0]["step"] == "0" and metrics[0]["train_nll"] and not metrics[0]["grad_norm"]
    assert result.selected_step == 0 and result.steps == 30
    assert result.val_nll == pytest.approx(float(metrics[0]["val_nll"]))
    assert result.test_nll == pytest.approx(evaluate_nll(clayflow.load(run), load_dataset("wine").test))
    capsys.readouterr()
    worse["calls"] = 0
    assert main(["train", "--data", "wine", "--steps", "30", "--no-plots", "--out", str(tmp_path / "cli")]) == 0
    assert "warning: no step improved on the untrained flow's validation NLL" in capsys.readouterr().err


def test_a_trained_step_must_beat_the_start_beyond_the_validation_noise():
    best = BestModel()
    start = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    assert best.consider(0, start) and best.step == 0
    lucky = start + torch.tensor([2.0, -1.5, 1.0, -1.0])  # better on average (+0.125), not beyond 2 s.e.
    assert not best.consider(10, lucky) and best.step == 0
    assert best.consider(20, start + 0.5) and best.step == 20  # every row better: accepted
    assert best.consider(30, start + lucky - start + 0.6) and best.step == 30  # then the lowest mean NLL wins
    assert not best.consider(40, start + 0.1) and best.step == 30
    one_row = BestModel()
    assert one_row.consider(0, torch.tensor([-1.0])) and not one_row.consider(1, torch.tensor([5.0]))


def test_discrete_columns_are_detected_by_values_and_chosen_by_name_or_number():
    rng = np.random.default_rng(0)
    values = np.column_stack([
        rng.normal(size=60),                            # continuous
        rng.integers(1, 3, size=60),                    # two codes: discrete, step 1
        rng.integers(0, 1000, size=60),                 # whole numbers, too many values: continuous
        np.round(rng.uniform(0, 2, size=60), 1),        # recorded to 0.1, 21 values: discrete, step 0.1
        np.round(rng.uniform(0, 2, size=60), 2),        # recorded to 0.01, ~50 values: continuous
        2.5 * rng.integers(0, 5, size=60),              # a rating in steps of 2.5
    ])  # fmt: skip
    data = _table(values, ["x", "sex", "count", "width", "length", "stars"])
    assert len(np.unique(values[:, 2])) > MAX_DISCRETE_VALUES and len(np.unique(values[:, 4])) > MAX_DISCRETE_VALUES
    assert discrete_columns(data, "auto") == {1: 1.0, 3: pytest.approx(0.1), 5: 2.5}
    assert discrete_columns(data, "none") == {}
    assert discrete_columns(data, "count,2,length") == {1: 1.0, 2: 1.0, 4: pytest.approx(0.01)}
    with pytest.raises(UsageError, match=r"column\(s\) 1 \(x\) hold values that are not on a grid"):
        discrete_columns(data, "x")
    with pytest.raises(UsageError, match="no column 'age'.*columns: x, sex, count, width, length, stars"):
        discrete_columns(data, "age")


@pytest.mark.parametrize("step", [1.0, 0.1, 0.01, 0.001, 2.5])
def test_dequantized_columns_round_trip_exactly_and_stay_within_one_step(step):
    """Every value of a grid as float32 reads it from a file ("0.9" is 0.89999998) comes back
    exactly, up to 3,000 steps from 0, from either edge of its bin (to within 2 float32 ulps)."""
    k = torch.arange(-3000, 3000, dtype=torch.float64)
    grid = (k * step).round(decimals=9).float()  # the float32 nearest to each grid point
    x = torch.stack([grid, torch.linspace(-1, 1, len(k)), grid.flip(0)], dim=1)
    layer = T.DequantizeColumns(3, [0, 2], [step, step])
    for u in (0.0, 0.5, 0.99):  # the edges of the bins, and the middle
        y = x + torch.tensor([step, 0.0, step]) * u
        assert torch.equal(layer.inverse(y)[0], x), u
    # Drawn noise: within one step. (Far from 0 a draw within an ulp of the top of its bin
    # rounds, in float32, onto the next grid point; near 0 that cannot happen.)
    torch.manual_seed(0)
    near = x[2900:3100]
    y, logabsdet = layer(near)
    assert torch.equal(y[:, 1], near[:, 1]) and torch.equal(logabsdet, torch.zeros(len(near)))
    noise = y[:, [0, 2]] - near[:, [0, 2]]
    assert bool((noise >= 0).all()) and bool((noise < step * 1.0001).all()) and noise.std() > step / 4
    assert torch.equal(layer.inverse(y)[0], near)


def test_iris_widths_recorded_to_a_millimetre_are_dequantized_and_said(tmp_path, capsys):
    """A GaussianMixture puts a near-singular component on iris' 29 setosa petal widths of
    exactly 0.2 cm (+6 nats on such test rows): recorded values on a coarse grid have no
    density. They are dequantized across their 0.1 cm step, for clayflow and the benchmark's
    baselines alike."""
    assert main(["train", "--data", "iris", "--steps", "2", "--no-plots", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "column(s) 2, 4 (sepal width (cm), petal width (cm)) hold few values on a grid (step 0.1)" in err
    spec = torch.load(tmp_path / "r/checkpoints/last.pt", weights_only=False)["model_spec"]
    assert spec["discrete"] == [1, 3] and spec["discrete_steps"] == pytest.approx([0.1, 0.1])
    flow = clayflow.load(tmp_path / "r")
    dequantize = next(m for m in flow.modules() if isinstance(m, T.DequantizeColumns))
    assert dequantize.steps == pytest.approx([0.0, 0.1, 0.0, 0.1])


def test_samples_of_grid_columns_are_written_as_grid_decimals_under_a_quoted_header(tmp_path, capsys):
    """A width recorded to 0.1 is sampled on its grid: written as 2.9, not as float32's
    2.9000001, under a header that quotes a name holding a comma; score reads the file back."""
    rng = np.random.default_rng(0)
    rows = np.c_[rng.normal(50, 10, 120), np.round(rng.uniform(2, 4, 120), 1)]
    data = tmp_path / "t.csv"
    with open(data, "w") as file:
        file.write('"income, USD",width\n')
        np.savetxt(file, rows, delimiter=",", fmt="%.4f")
    run, out = tmp_path / "r", tmp_path / "s.csv"
    assert main(["train", "--data", str(data), "--steps", "20", "--no-plots", "--out", str(run)]) == 0
    assert main(["sample", str(run), "--n", "300", "--out", str(out)]) == 0
    text = out.read_text().splitlines()
    assert text[0] == '"income, USD",width'
    widths = [line.rsplit(",", 1)[1] for line in text[1:]]
    assert all(len(w.split(".")[-1]) <= 1 for w in widths), sorted(set(widths))[-5:]  # one decimal at most
    assert main(["score", str(run), "--data", str(out), "--out", str(tmp_path / "scores.csv")]) == 0


def test_sample_says_how_many_draws_of_a_discrete_column_leave_its_training_values(tmp_path, capsys):
    """A short MAF on iris draws classes -1 and 3 as well as 0-2: written as drawn, and said
    with the share the file holds; a run that recorded no ranges (before 2026-12-04) says nothing."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    data, run, out = tmp_path / "iris.csv", tmp_path / "r", tmp_path / "s.csv"
    np.savetxt(data, np.c_[iris.data, iris.target], delimiter=",", fmt="%g", comments="",
               header=",".join([*iris.feature_names, "target"]))  # fmt: skip
    assert main(["train", "--data", str(data), "--model", "maf", "--steps", "200", "--no-plots", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2000", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    target = np.loadtxt(out, delimiter=",", skiprows=1)[:, 4]
    share = np.mean((target < 0) | (target > 2))
    assert share > 0.01 and f"target {100 * share:.1f}% (training rows: 0 to 2)" in err, err
    assert err.startswith("clayflow: warning: draws of discrete columns") and err.count("\n") == 1, err
    for name in ("best.pt", "last.pt"):
        payload = torch.load(run / "checkpoints" / name, weights_only=True)
        del payload["column_ranges"]
        torch.save(payload, run / "checkpoints" / name)
    assert main(["sample", str(run), "--n", "2000", "--out", str(out), "--force"]) == 0
    assert capsys.readouterr().err == ""


def test_diabetes_sex_column_is_dequantized_and_said(tmp_path, capsys):
    assert main(["train", "--data", "diabetes", "--steps", "2", "--no-plots", "--out", str(tmp_path / "r")]) == 0
    assert "column(s) 2 (sex) hold few whole-number values: they are dequantized" in capsys.readouterr().err
    spec = torch.load(tmp_path / "r/checkpoints/last.pt", weights_only=False)["model_spec"]
    assert spec["discrete"] == [1] and spec["power"] and spec["whiten"]


def test_a_bad_discrete_choice_is_one_usage_line(tmp_path, capsys):
    argv = ["train", "--data", "breast_cancer", "--discrete", "mean smoothness", "--out", str(tmp_path / "r")]
    assert main(argv) == 2  # recorded to 4 decimals: a measurement, not on a grid
    err = capsys.readouterr().err
    assert err.startswith("clayflow: error: --discrete: column(s) 5 (mean smoothness) hold values that are not")
    assert err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # 142 training rows: the small-table rule, epochs of 2 batches of 64
        ("wine", {"model": "realnvp", "batch_size": 64, "dropout": 0.3, "activation": "tanh", "hidden": 32,
                  "eval_every": 2, "patience": 250, "ema": 0.0}),
        # digits as images: once per epoch, patience of 23 epochs (500 steps), no table rule, averaged weights
        ("digits", {"model": "realnvp", "batch_size": 64, "dropout": None, "activation": None, "hidden": None,
                    "eval_every": 22, "patience": 23, "ema": 0.99}),
        # a 2D toy of 50,000 rows: spline couplings of 16 bins, big batches, epochs of 97 steps, patience of
        # 20 epochs, averaged weights
        ("moons", {"model": "nsf", "bins": 16, "batch_size": 512, "dropout": None, "activation": None, "hidden": None,
                   "eval_every": 97, "patience": 20, "ema": 0.99}),
    ],
)
def test_defaults_follow_the_size_of_the_data(data, expected):
    config = data_defaults(TrainConfig(data=data), load_dataset(data))
    assert {k: getattr(config, k) for k in expected} == expected


def test_coupling_flows_on_images_keep_the_weight_average_and_image_cnfs_the_raw_weights():
    digits = load_dataset("digits")
    assert data_defaults(TrainConfig(data="digits", model="glow"), digits).ema == 0.99
    assert data_defaults(TrainConfig(data="digits", model="glow", ema=0.0), digits).ema == 0.0
    assert data_defaults(TrainConfig(data="digits", model="realnvp"), digits).ema == 0.99
    assert data_defaults(TrainConfig(data="digits", model="cnf"), digits).ema == 0.0
    # a small table's Glow (a vector Glow) follows the table rule
    assert data_defaults(TrainConfig(data="wine", model="glow"), load_dataset("wine")).ema == 0.0


def test_a_named_model_wins_and_an_option_the_default_model_lacks_says_which_model_to_name(tmp_path, capsys):
    assert data_defaults(TrainConfig(data="moons", model="realnvp"), load_dataset("moons")).model == "realnvp"
    assert data_defaults(TrainConfig(data="wine", model="nsf"), load_dataset("wine")).model == "nsf"
    code = main(["train", "--mask", "half", "--steps", "2", "--no-plots", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "run").exists()
    assert err.startswith("clayflow: error: --mask: not an option of nsf, the default model for 50,000 training rows")
    assert err.rstrip().endswith("name a model that takes --mask: --model realnvp or --model nice")
    # the models named take every option given, not just the one the default lacks
    for data, options, advice in [
        ("moons", ["--solver", "rk4"], "name a model that takes --solver: --model cnf"),
        ("moons", ["--layers", "3", "--coupling", "spline"], "name a model that takes --layers, --coupling: --model glow"),
        ("wine", ["--bins", "4"], "name a model that takes --bins: --model nsf or --model glow"),
        ("moons", ["--mask", "half", "--solver", "rk4"], "no vector model takes all of --mask, --solver"),
        ("moons", ["--scales", "2"], "no vector model takes --scales (--scales: for images)"),
    ]:
        code = main(["train", "--data", data, *options, "--steps", "2", "--no-plots", "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.rstrip().endswith(advice), err
    assert not (tmp_path / "run").exists()


def test_given_options_win_over_the_data_rule_and_config_json_records_the_rule(tmp_path):
    config = data_defaults(TrainConfig(data="wine", hidden=128, patience=0), load_dataset("wine"))
    assert (config.hidden, config.patience, config.dropout) == (128, 0, 0.3)
    assert data_defaults(TrainConfig(data="moons", ema=0.0), load_dataset("moons")).ema == 0.0
    assert len(load_dataset("breast_cancer").train) < SMALL_TABLE_ROWS
    run = tmp_path / "run"
    assert main(["train", "--data", "wine", "--steps", "4", "--no-plots", "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"], saved["hidden"], saved["dropout"], saved["eval_every"], saved["patience"]) == ("realnvp", 32, 0.3, 2, 250)
    assert math.isclose(saved["lr"], 2e-3)


@pytest.mark.parametrize("model", ["realnvp", "nice", "glow"])
def test_small_tables_get_tanh_conditioners_and_a_bad_activation_is_one_usage_line(tmp_path, capsys, model):
    """tanh conditioners have bounded outputs, so a coupling cannot extrapolate a test row
    outside the training range linearly (with ReLU, wine's outlying test rows lost 20-130 nats)."""
    run = tmp_path / "run"
    assert main(["train", "--data", "wine", "--model", model, "--steps", "2", "--no-plots", "--out", str(run)]) == 0
    spec = torch.load(run / "checkpoints/last.pt", weights_only=False)["model_spec"]
    assert spec["options"]["activation"] == "tanh"
    activations = {type(m) for m in clayflow.load(run).modules() if isinstance(m, (torch.nn.Tanh, torch.nn.ReLU))}
    assert activations == {torch.nn.Tanh}
    capsys.readouterr()
    argv = ["train", "--data", "wine", "--model", model, "--activation", "swish", "--out", str(tmp_path / "bad")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "clayflow: error: unknown activation 'swish'; choose one of: relu, tanh\n"
    assert not (tmp_path / "bad").exists()


def test_input_noise_is_shaped_as_the_continuous_columns_covariance():
    data = load_dataset("diabetes")  # column 1 (sex) is discrete
    factor = input_noise_factor(0.2, data, [1]).double()
    covariance = torch.cov(data.train.double().T)
    continuous = [j for j in range(data.features) if j != 1]
    expected = 0.04 * covariance[continuous][:, continuous]
    torch.testing.assert_close((factor @ factor.T)[continuous][:, continuous], expected, rtol=1e-5, atol=0.0)
    assert not factor[1].any() and not factor[:, 1].any()
    assert input_noise_factor(0.0, data, [1]) is None


def test_input_noise_changes_the_training_batches_only(tmp_path):
    losses, start = {}, {}
    for noise in (0.0, 0.5):
        run = tmp_path / f"noise{noise}"
        train(TrainConfig(data="wine", steps=4, eval_every=2, input_noise=noise), run, progress=False)
        with (run / "metrics.csv").open() as file:
            rows = list(csv.DictReader(file))
        start[noise] = (rows[0]["train_nll"], rows[0]["val_nll"])  # step 0: the clean rows
        losses[noise] = [float(r["train_loss"]) for r in rows[1:]]
        assert json.loads((run / "config.json").read_text())["input_noise"] == noise
    assert start[0.0] == start[0.5] and len(losses[0.0]) == 2
    assert all(a != b for a, b in zip(losses[0.0], losses[0.5]))


def test_input_noise_is_refused_on_images(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--input-noise", "0.1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clayflow: error: --input-noise regularises the training rows of tables")
    assert err.count("\n") == 1


def test_actnorm_initialises_on_the_training_rows_at_step_0(tmp_path):
    """Glow's first ActNorm sees the whitened training rows first (mean 0, std 1 exactly), so it
    starts as the identity; initialised on the 18 validation rows it would not."""
    run = tmp_path / "run"
    result = train(TrainConfig(model="glow", data="wine", steps=1), run, progress=False)
    assert result.selected_step == 0
    actnorm = next(m for m in clayflow.load(run).modules() if isinstance(m, T.ActNorm))
    assert actnorm.loc.abs().max() < 1e-4 and actnorm.log_scale.abs().max() < 1e-4


def test_a_run_of_the_previous_version_resumes(tmp_path, capsys):
    """Runs written before the fitted start existed have no power_transform/whiten/discrete
    in config.json and none of discrete/power/whiten in the checkpoint's model: they resume
    as they were trained."""
    run = tmp_path / "run"
    argv = ["train", "--data", "wine", "--steps", "4", "--no-power-transform", "--no-whiten", "--discrete", "none"]
    assert main([*argv, "--hidden", "16", "--dropout", "0", "--no-plots", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    for key in ("power_transform", "whiten", "discrete", "dropout"):
        del config[key]
    (run / "config.json").write_text(json.dumps(config))
    checkpoint = torch.load(run / "checkpoints/last.pt", weights_only=False)
    for key in ("discrete", "power", "whiten"):
        del checkpoint["model_spec"][key]
    del checkpoint["model_spec"]["options"]["dropout"]
    checkpoint["config"] = config
    torch.save(checkpoint, run / "checkpoints/last.pt")
    assert main(["train", "--resume", str(run), "--steps", "6", "--no-plots"]) == 0, capsys.readouterr().err


def test_a_run_of_the_previous_version_keeps_its_columns_and_relu(tmp_path, capsys):
    """An iris run of the previous version dequantized no column (its widths are on a 0.1 grid,
    not whole numbers) and used ReLU conditioners, with config.json saying discrete "auto" and
    activation null: it resumes as it was built, though a new run would choose otherwise."""
    run = tmp_path / "run"
    argv = ["train", "--data", "iris", "--steps", "4", "--discrete", "none", "--activation", "relu"]
    assert main([*argv, "--no-plots", "--out", str(run)]) == 0
    config = {**json.loads((run / "config.json").read_text()), "discrete": "auto", "activation": None}
    (run / "config.json").write_text(json.dumps(config))
    checkpoint = torch.load(run / "checkpoints/last.pt", weights_only=False)
    del checkpoint["model_spec"]["discrete_steps"], checkpoint["model_spec"]["options"]["activation"]
    checkpoint["config"] = config
    torch.save(checkpoint, run / "checkpoints/last.pt")
    assert main(["train", "--resume", str(run), "--steps", "6", "--no-plots"]) == 0, capsys.readouterr().err
    flow = clayflow.load(run)
    assert not any(isinstance(m, T.DequantizeColumns) for m in flow.modules())
    assert any(isinstance(m, torch.nn.ReLU) for m in flow.modules())
    assert not any(isinstance(m, torch.nn.Tanh) for m in flow.modules())


def test_residual_conditioners_without_dropout_keep_their_parameter_names():
    from clayflow.nn import ResidualMLP

    names = set(ResidualMLP(3, 4, hidden=8, depth=1).state_dict())
    assert "blocks.0.body.3.weight" in names and not any("body.4" in n for n in names)


@pytest.mark.parametrize(
    "data, model, coupling, bins",
    [("moons", "nsf", None, 16), ("wine", "nsf", None, None), ("moons", "glow", "spline", 16),
     ("moons", "glow", None, None), ("moons", "realnvp", None, None)],
)
def test_spline_models_take_more_bins_on_large_data(data, model, coupling, bins):
    config = data_defaults(TrainConfig(data=data, model=model, coupling=coupling), load_dataset(data))
    assert config.bins == bins  # None: the builder's 8
    given = data_defaults(TrainConfig(data=data, model=model, coupling=coupling, bins=5), load_dataset(data))
    assert given.bins == 5
