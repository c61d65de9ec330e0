"""Plots of runs on small tables: every evaluation visible, histograms as densities of all the
rows and many samples, no clipping, and the columns drawn (and left out) said in the figure."""

import csv
import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import clayflow
from clayflow.errors import UsageError
from clayflow.plotting import plot_run
from clayflow.plotting.plots import (
    choose_columns,
    histogram_pair,
    loss_figure,
    marginals_figure,
    model_sample_count,
    pairs_figure,
    selected_step,
)
from clayflow.train.run import METRIC_COLUMNS


def metrics_row(step: int, **values) -> dict[str, str]:
    """A metrics.csv row as ``read_metrics`` gives it: strings, "" where missing."""
    return {key: str(values.get(key, "")) for key in METRIC_COLUMNS} | {"step": str(step)}


def write_metrics(run_dir, rows) -> None:
    with (run_dir / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_histograms_leave_samples_outside_the_data_range_out_instead_of_clipping():
    data = np.linspace(0.0, 1.0, 20)
    samples = np.concatenate([np.linspace(0.2, 0.8, 900), np.full(100, 50.0)])
    pair = histogram_pair(data, samples)
    assert pair.outside == pytest.approx(0.1)
    assert pair.data_edges[0] < 0.0 and pair.data_edges[-1] > 1.0  # the data's range with a margin
    assert pair.data_edges[-1] < 2.0
    # Densities of all the samples: the 10% outside is missing from the area, not piled at the edge.
    assert np.sum(pair.model_density * np.diff(pair.model_edges)) == pytest.approx(0.9)
    assert pair.model_density[-1] == 0.0
    assert np.sum(pair.data_density * np.diff(pair.data_edges)) == pytest.approx(1.0)


def test_non_finite_samples_count_as_outside():
    pair = histogram_pair(np.arange(10.0) / 3, np.array([0.5, 1.0, np.nan, np.inf]))
    assert pair.outside == pytest.approx(0.5)


def test_model_bins_split_the_data_bins_of_a_small_table():
    pair = histogram_pair(
        np.random.default_rng(0).normal(size=18) / 3, np.random.default_rng(1).normal(size=5000)
    )
    assert len(pair.data_edges) - 1 == 5  # Rice's rule for 18 rows
    assert len(pair.model_edges) - 1 == 40
    assert np.isin(pair.data_edges, pair.model_edges).all()


def test_values_on_a_grid_never_lie_on_a_bin_edge():
    data = np.array([0, 1, 1, 2, 2, 2, 3, 3, 5, 7] * 2, dtype=float)  # counts: integers
    samples = np.random.default_rng(0).integers(0, 8, size=5000).astype(float)
    pair = histogram_pair(data, samples)
    for edges in (pair.data_edges, pair.model_edges):
        distance = np.abs(np.concatenate([data, samples])[:, None] - edges[None, :])
        assert distance.min() == pytest.approx(0.5)
    assert pair.outside == 0.0


def test_default_columns_are_the_first_and_the_figure_says_so():
    assert choose_columns(30, None, None, 16).indices == list(range(16))
    assert choose_columns(30, None, None, 16).note == "columns 1-16 of 30 (choose with --columns)"
    assert choose_columns(13, None, None, 16).indices == list(range(13))
    assert choose_columns(13, None, None, 16).note == ""


def test_chosen_columns_by_name_or_index_in_their_order():
    names = ["a", "b", "c", "d", "e"]
    assert choose_columns(5, names, ["d", 0, "d"], 4).indices == [3, 0]
    many = choose_columns(5, names, ["e", "d", "c", "b", "a"], 4)
    assert many.indices == [4, 3, 2, 1] and many.note == "the first 4 of the 5 columns chosen"
    for bad in (["z"], [5], [-1], []):
        with pytest.raises(UsageError):
            choose_columns(5, names, bad, 4)


def test_a_single_evaluation_is_drawn_as_a_visible_marker():
    fig = loss_figure([metrics_row(0, train_loss=1.5, train_nll=1.5, val_nll=2.0)])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    for label in ("train", "validation"):
        assert len(lines[label].get_xdata()) == 1 and lines[label].get_marker() == "o"


def test_missing_values_are_left_out_of_the_loss_curves():
    rows = [
        metrics_row(0, train_loss=3.0, train_nll=3.0, val_nll=3.5),
        metrics_row(10, train_loss=2.0, train_nll=2.0),  # no evaluation at this row
        metrics_row(20, train_loss=1.5, train_nll=1.5, val_nll=2.5),
    ]
    lines = {line.get_label(): line for line in loss_figure(rows).axes[0].get_lines()}
    assert list(lines["validation"].get_xdata()) == [0, 20]
    assert list(lines["train"].get_xdata()) == [0, 10, 20]


def test_flow_matching_loss_goes_on_a_second_axis_from_step_1():
    rows = [metrics_row(0, train_nll=3.0, val_nll=3.5)] + [
        metrics_row(step, train_loss=1.0 / step, val_nll=2.0) for step in (10, 20)
    ]
    fig = loss_figure(rows)
    assert len(fig.axes) == 2
    (fm_loss,) = fig.axes[1].get_lines()
    assert list(fm_loss.get_xdata()) == [10, 20] and fm_loss.get_marker() == "o"


def test_the_step_of_the_kept_weights_is_marked_when_the_results_are_current(tmp_path):
    rows = [metrics_row(step, train_loss=1.0, train_nll=1.0, val_nll=2.0) for step in (0, 100, 200)]
    assert selected_step(tmp_path, rows) is None  # no results yet: a run still training
    (tmp_path / "results.json").write_text(json.dumps({"steps": 200, "selected_step": 100}))
    assert selected_step(tmp_path, rows) == 100
    assert selected_step(tmp_path, rows[:2]) is None  # results of another end than these rows
    labels = [line.get_label() for line in loss_figure(rows, 100).axes[0].get_lines()]
    assert "weights kept (step 100)" in labels


def test_model_samples_are_many_but_bounded():
    assert model_sample_count(18) == 5000
    assert model_sample_count(500) == 10_000
    assert model_sample_count(1_000_000) == 20_000


def test_table_figures_say_what_they_compare_and_which_columns():
    data = np.random.default_rng(0).normal(size=(18, 30))
    samples = np.random.default_rng(1).normal(size=(5000, 30))
    marginals = marginals_figure(data, samples)
    title = marginals.get_suptitle()
    assert "18 test rows" in title and "5000 samples" in title and "columns 1-16 of 30" in title
    assert sum(ax.axison for ax in marginals.axes) == 16
    pairs = pairs_figure(data, samples, [f"c{j}" for j in range(30)], ["c7", "c2"])
    assert pairs.axes[-1].get_xlabel() == "c2" and "columns" not in pairs.get_suptitle()
    assert "columns 1-4 of 30" in pairs_figure(data, samples).get_suptitle()


def test_panels_say_how_many_samples_fall_outside():
    data = np.random.default_rng(0).normal(size=(18, 2))
    samples = np.concatenate([np.zeros((900, 2)), np.full((100, 2), 99.0)])
    titles = [ax.get_title() for ax in marginals_figure(data, samples).axes if ax.axison]
    assert all("10% of samples outside the plot" in title for title in titles)


def test_plot_run_draws_a_table_from_all_its_rows(tmp_path):
    write_metrics(tmp_path, [metrics_row(0, train_loss=7.0, train_nll=7.0, val_nll=7.5)])
    flow = clayflow.models.realnvp(3, layers=2, hidden=8)
    paths = plot_run(tmp_path, flow, torch.randn(18, 3), ["a", "b", "c"], show_columns=["c", "a"])
    assert [p.name for p in paths] == ["loss.png", "marginals.png", "pairs.png"]
    assert all(p.stat().st_size > 0 for p in paths)
