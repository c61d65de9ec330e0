"""Anomaly scores: a threshold calibrated at a false-alarm rate flags about that share of
normal rows; typicality also flags rows that are too likely; ``clayflow score`` writes
scores and flags and, with labels, AUROC, AUPRC and a ROC curve."""

import math

import numpy as np
import pytest
import torch

from clayflow import models
from clayflow.cli.main import main
from clayflow.diagnostics.anomaly import (
    ColumnCode,
    GaussianReference,
    LocalPixelReference,
    calibrate,
    compressed_bits,
    evaluate_labels,
)


def standard_normal_flow(dims: int):
    """An untrained RealNVP: its couplings start as the identity, so p = N(0, I)."""
    return models.realnvp(dims, layers=2, hidden=8).eval()


@torch.no_grad()
def test_the_threshold_flags_the_chosen_share_of_normal_rows():
    flow = standard_normal_flow(5)
    g = torch.Generator().manual_seed(0)
    val, normal = torch.randn(4000, 5, generator=g), torch.randn(4000, 5, generator=g)
    far = 3 * torch.randn(500, 5, generator=g)
    scorer = calibrate("likelihood", 0.05, val, flow.log_prob(val), None)
    flagged = scorer.flag(scorer.scores(flow.log_prob(normal), normal)).double().mean().item()
    assert abs(flagged - 0.05) < 4 * (0.05 * 0.95 / 4000) ** 0.5  # binomial: within 4 standard errors
    test = torch.cat([normal, far])
    scores = scorer.scores(flow.log_prob(test), test)
    labels = np.r_[np.zeros(len(normal)), np.ones(len(far))]
    figures = evaluate_labels(scores, scorer.flag(scores), labels)
    assert figures["auroc"] > 0.95 and figures["detection_rate"] > 0.8
    assert abs(figures["false_alarm_rate"] - flagged) < 1e-12


@torch.no_grad()
def test_typicality_flags_rows_that_are_too_likely():
    """In 20 dimensions the mode (x = 0) is 10 nats more likely than a typical row: the
    likelihood score calls it the most normal row, the typicality score an anomaly."""
    flow = standard_normal_flow(20)
    val = torch.randn(3000, 20, generator=torch.Generator().manual_seed(1))
    mode = torch.zeros(1, 20)
    for method, flagged in (("likelihood", False), ("typicality", True)):
        scorer = calibrate(method, 0.01, val, flow.log_prob(val), None)
        assert bool(scorer.flag(scorer.scores(flow.log_prob(mode), mode))) is flagged, method


def test_the_ratio_reference_and_the_complexity_term():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5000, 3, generator=g) @ torch.tensor([[2.0, 0, 0], [1.0, 1.0, 0], [0, 0, 0.5]])
    reference = GaussianReference.fit(x)
    fitted = torch.distributions.MultivariateNormal(x.mean(0), covariance_matrix=torch.cov(x.T))  # no ridge
    assert torch.allclose(reference.log_prob(x[:10]), fitted.log_prob(x[:10]).double(), atol=2e-2)
    flat, noisy = torch.full((2, 1, 8, 8), 3.0), torch.randint(0, 17, (2, 1, 8, 8), generator=g).float()
    assert (compressed_bits(flat) < compressed_bits(noisy)).all()


def test_the_column_code_of_tables():
    """The flow's dequantized columns: add-one frequencies of the grid points seen plus one
    unseen share (masses that sum to 1), per unit of the step; continuous columns: a kernel
    density; bits add over columns; a wide integer range costs no memory."""
    g = torch.Generator().manual_seed(3)
    halves = torch.tensor([0.0, 0.0, 0.0, 0.5, 1.5])  # step 0.5: points 0 (x3), 1, 3
    continuous = torch.randn(5, generator=g)
    stamps = torch.tensor([0.0, 1e9, 1e9, 2e9, 5.0])  # integers over a range of 2e9
    code = ColumnCode.fit(torch.stack([halves, continuous, stamps], 1).double(), {0: 0.5, 2: 1.0})
    masses = torch.tensor([4.0, 2.0, 2.0], dtype=torch.float64) / 9.0  # (count + 1) / (5 + 3 + 1)
    assert torch.equal(code.points[0], torch.tensor([0, 1, 3]))
    assert torch.allclose(code.log_mass[0].exp(), masses)
    assert math.isclose(float(masses.sum()) + math.exp(code.log_unseen[0]), 1.0)
    from scipy.stats import gaussian_kde

    rows = torch.tensor([[0.0, 0.3, 1e9], [1.5, -1.0, 7.0], [7.0, 0.0, 0.0], [0.25, 0.0, 5.0]])  # 7, 0.25: unseen
    kde = torch.as_tensor(gaussian_kde(continuous.double().numpy()).logpdf(rows[:, 1].numpy()))
    unseen, step = -math.log(9.0), math.log(0.5)
    first = torch.stack([masses[0].log(), masses[2].log(), torch.tensor(unseen), torch.tensor(unseen)]) - step
    third = torch.tensor([3 / 10, 1 / 10, 2 / 10, 2 / 10], dtype=torch.float64).log()  # 4 points seen, 5 rows
    assert torch.allclose(code.bits(rows), -(first + kde + third) / math.log(2))


def test_score_flags_rows_and_measures_labelled_data(tmp_path, capsys):
    run = tmp_path / "run"
    # a small realnvp separates these rows in 200 steps (AUROC > 0.9; the same size of nsf, the default on
    # moons, reached 0.898)
    assert main(["train", "--model", "realnvp", "--steps", "200", "--hidden", "16", "--layers", "2", "--no-plots",
                 "--out", str(run)]) == 0  # fmt: skip
    g = np.random.default_rng(0)
    moons = __import__("sklearn.datasets", fromlist=["make_moons"]).make_moons(300, noise=0.1, random_state=1)[0]
    far = g.uniform(-4, 4, (100, 2)) + np.array([0.0, 4.0])
    rows = np.c_[np.r_[moons, far], np.r_[np.zeros(300), np.ones(100)]]
    data = tmp_path / "rows.csv"
    np.savetxt(data, rows, delimiter=",")
    out, roc = tmp_path / "scores.csv", tmp_path / "roc.png"
    capsys.readouterr()
    code = main(["score", str(run), "--data", str(data), "--label-column", "3", "--fpr", "0.05",
                 "--roc", str(roc), "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and roc.stat().st_size > 0, printed
    table = np.genfromtxt(out, delimiter=",", names=True)
    assert table.dtype.names == ("row", "log_prob", "bits_per_dim", "score", "flag") and len(table) == 400
    auroc = float(printed.split("AUROC ")[1].split(",")[0])
    assert auroc > 0.9 and "300 normal and 100 anomalous rows" in printed
    assert table["flag"][300:].mean() > 0.7 and table["flag"][:300].mean() < 0.2
    labels, features = tmp_path / "labels.csv", tmp_path / "features.csv"
    np.savetxt(labels, rows[:, 2:])
    np.savetxt(features, rows[:, :2], delimiter=",")
    assert main(["score", str(run), "--data", str(features), "--labels", str(labels), "--out", str(tmp_path / "x.csv")]) == 0
    assert f"AUROC {auroc:.4f}" in capsys.readouterr().out  # the same rows and scores
    code = main(["score", str(run), "--data", str(features), "--labels", str(labels), "--method", "complexity", "--fpr", "0.05",
                 "--out", str(tmp_path / "c.csv")])  # fmt: skip
    assert code == 0 and "complexity score threshold" in capsys.readouterr().out  # tables: the independent-columns code
    np.savetxt(labels, rows[:10, 2:])
    assert main(["score", str(run), "--data", str(features), "--labels", str(labels), "--out", str(tmp_path / "z.csv")]) == 1
    assert main(["score", str(run), "--data", str(data), "--labels", str(labels), "--out", str(tmp_path / "w.csv")]) == 1
    errors = capsys.readouterr().err
    assert "holds 10 labels for 400 scored rows" in errors and "has 3 columns but the model was trained on 2" in errors
    for bad, message in ((["--fpr", "1.5"], "--fpr must be in (0, 1)"), (["--roc", str(tmp_path / "r.png")], "--roc draws")):
        assert main(["score", str(run), "--data", "moons", "--out", str(tmp_path / "y.csv"), *bad]) == 2
        assert message in capsys.readouterr().err


def test_a_row_whose_density_underflows_is_named_flagged_and_ranked_most_anomalous(good_run, tmp_path, capsys):
    """A cell of 1e30 gives log p = -inf in float32: written as such, named in one note, left
    out of the printed mean, flagged, and ranked above every finite score for AUROC."""
    rows = np.array([[0.5, 0.2], [1e30, 0.0], [1.0, -0.4], [3.0, 3.0]])
    data, labels = tmp_path / "rows.csv", tmp_path / "labels.csv"
    np.savetxt(data, rows, delimiter=",")
    np.savetxt(labels, [0, 1, 0, 1])
    out = tmp_path / "s.csv"
    capsys.readouterr()
    code = main(["score", str(good_run), "--data", str(data), "--labels", str(labels), "--fpr", "0.05", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = np.genfromtxt(out, delimiter=",", names=True)
    assert np.isneginf(table["log_prob"][1]) and np.isfinite(table["log_prob"][[0, 2, 3]]).all()
    assert table["flag"][1] == 1
    assert "log-likelihoods of 1 -inf (density 0 in float32: row 2)" in captured.err and "flagged and ranked" in captured.err
    mean = float(captured.out.split("mean log-likelihood ")[1].split()[0])
    assert mean == pytest.approx(table["log_prob"][[0, 2, 3]].mean(), abs=1e-3)
    expected = 1.0 if table["log_prob"][3] < table["log_prob"][[0, 2]].min() else 0.75
    assert f"AUROC {expected:.4f}" in captured.out


def test_rows_of_which_none_has_a_finite_log_likelihood(good_run, tmp_path, capsys):
    data = tmp_path / "rows.csv"
    np.savetxt(data, [[1e30, 0.0], [3e38, 3e38]], delimiter=",")
    capsys.readouterr()
    assert main(["score", str(good_run), "--data", str(data), "--out", str(tmp_path / "s.csv")]) == 0
    captured = capsys.readouterr()
    assert "scored 2 examples: none has a finite log-likelihood" in captured.out and "nan" not in captured.out
    assert "row 1" in captured.err and "row 2" in captured.err and "flagged" not in captured.err


def test_a_nan_score_is_flagged():
    scorer = calibrate("likelihood", 0.1, torch.zeros(20, 2), -torch.arange(20.0), None, None, {})
    assert scorer.flag(torch.tensor([float("nan"), -100.0, 100.0])).tolist() == [True, False, True]


def test_the_local_pixel_reference_knows_smoothness_not_position():
    """Digits are smoother than the same pixels shuffled, and a digit moved by one column is
    as likely as before (one regression shared by every position)."""
    from clayflow.data import load_dataset

    digits = load_dataset("digits")
    reference = LocalPixelReference.fit(digits.train + 0.5)
    test = digits.test + 0.5
    shuffled = test.reshape(len(test), -1)[:, torch.randperm(64, generator=torch.Generator().manual_seed(0))].reshape(test.shape)
    assert (reference.log_prob(test) > reference.log_prob(shuffled)).double().mean() > 0.95
    moved = torch.roll(test, 1, dims=3)
    empty_column = (test[:, :, :, -1] == 0.5).all(-1).squeeze(1)  # rolling moves no ink around the edge
    gap = (reference.log_prob(moved) - reference.log_prob(test))[empty_column].abs()
    assert empty_column.sum() > 20 and gap.median() < 2.0


@pytest.mark.parametrize("method", ["typicality", "ratio", "complexity"])
def test_image_scores(tmp_path, method, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--steps", "3", "--hidden", "8", "--depth", "1", "--no-plots", "--out", str(run)]) == 0
    assert main(["score", str(run), "--data", "digits", "--method", method, "--fpr", "0.1", "--out", str(tmp_path / "s.csv")]) == 0
    assert f"{method} score threshold" in capsys.readouterr().out


def test_the_local_pixel_reference_is_the_same_fitted_in_chunks(monkeypatch):
    from clayflow.diagnostics import anomaly

    x = torch.randint(0, 17, (50, 2, 8, 8), generator=torch.Generator().manual_seed(4)).double()
    whole = LocalPixelReference.fit(x)
    monkeypatch.setattr(anomaly, "_CHUNK", 7)
    parts = LocalPixelReference.fit(x)
    assert torch.allclose(whole.weights, parts.weights) and torch.allclose(whole.variance, parts.variance)
    assert torch.allclose(whole.log_prob(x), parts.log_prob(x))


def test_dequantized_scores_use_an_importance_weighted_bound_over_several_draws(tmp_path, capsys):
    """One noise draw makes each row's log-likelihood a noisy lower bound; the bound over K
    draws is higher on average (Jensen) and repeats far more closely under other noise."""
    from clayflow.train import evaluate

    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--steps", "30", "--hidden", "8", "--depth", "1", "--no-plots", "--out", str(run)]) == 0
    flow = __import__("clayflow").load(run)
    x = __import__("clayflow.data", fromlist=["load_dataset"]).load_dataset("digits").test[:120]
    one, many = evaluate.log_prob_in_chunks(flow, x), evaluate.log_prob_in_chunks(flow, x, draws=16)
    assert many.mean() > one.mean()
    original = evaluate.EVAL_SEED
    try:
        evaluate.EVAL_SEED = original + 1  # other noise
        one_again, many_again = evaluate.log_prob_in_chunks(flow, x), evaluate.log_prob_in_chunks(flow, x, draws=16)
    finally:
        evaluate.EVAL_SEED = original
    assert (many - many_again).std() < 0.5 * (one - one_again).std()
    gaussian = standard_normal_flow(2)  # no dequantization: draws change nothing
    rows = torch.randn(50, 2)
    assert torch.equal(evaluate.log_prob_in_chunks(gaussian, rows, draws=8), evaluate.log_prob_in_chunks(gaussian, rows))
    capsys.readouterr()
    assert main(["score", str(run), "--data", "digits", "--out", str(tmp_path / "s.csv")]) == 0
    assert "importance-weighted over 8 dequantization draws" in capsys.readouterr().out
    assert main(["score", str(run), "--data", "digits", "--draws", "0", "--out", str(tmp_path / "t.csv")]) == 2


def test_draws_asked_of_a_model_without_dequantization_are_said_to_change_nothing(good_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["score", str(good_run), "--data", "moons", "--out", str(tmp_path / "s.csv")]) == 0
    assert "draws" not in capsys.readouterr().err  # the default asks for nothing
    assert main(["score", str(good_run), "--data", "moons", "--draws", "4", "--out", str(tmp_path / "t.csv")]) == 0
    err = capsys.readouterr().err
    assert "note: --draws 4 has no effect on this run: its model adds no dequantization noise" in err, err


def test_a_cnf_with_a_random_trace_estimate_takes_one_draw():
    """K exponentiated Hutchinson estimates would bias the bound upwards, past log P(x)."""
    from clayflow.train.evaluate import effective_draws, one_draw_reason

    assert effective_draws(models.cnf_image((1, 8, 8), 17, eval_trace="hutchinson"), 8) == 1
    assert effective_draws(models.cnf_image((1, 8, 8), 17, eval_trace="exact"), 8) == 8
    assert effective_draws(models.cnf(2), 8) == 1  # nothing dequantized
    assert "Hutchinson" in one_draw_reason(models.cnf_image((1, 8, 8), 17, eval_trace="hutchinson"))
    assert "no dequantization noise" in one_draw_reason(models.cnf(2))
