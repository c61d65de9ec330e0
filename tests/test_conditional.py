"""Conditional flows p(x | c): for every vector family, each context gives a normalised
density of its own; sampling draws one example per context row, in one batch; a flow trained
on a conditional toy puts its mass where the context says."""

import json
import math

import numpy as np
import pytest
import torch

import clayflow
from clayflow import models
from clayflow.cli.main import main
from clayflow.core.flow import EventShapeError
from clayflow.diagnostics.density import box_mass
from clayflow.errors import ClayflowError
from zoo import randomize

FAMILIES = {
    "realnvp": lambda **c: models.realnvp(2, layers=3, hidden=16, **c),
    "nice": lambda **c: models.nice(2, layers=3, hidden=16, depth=1, **c),
    "glow": lambda **c: models.glow_vector(2, layers=2, hidden=16, **c),
    "maf": lambda **c: models.maf(2, layers=2, hidden=16, **c),
    "iaf": lambda **c: models.iaf(2, layers=2, hidden=16, **c),
    "nsf": lambda **c: models.nsf(2, layers=2, hidden=16, bins=4, **c),
    "nsf_ar": lambda **c: models.nsf(2, layers=2, hidden=16, bins=4, autoregressive=True, **c),
}


@pytest.mark.parametrize("name, embedding", [*((name, 0) for name in FAMILIES), ("realnvp", 4), ("maf", 4)])
def test_each_context_gives_a_normalised_density_of_its_own(name, embedding, one_thread):
    flow = randomize(FAMILIES[name](context_features=3, context_embedding=embedding), scale=0.15).double().eval()
    if name == "glow":  # a randomised ActNorm counts as initialised
        for module in flow.modules():
            if hasattr(module, "initialized"):
                module.initialized.fill_(True)
    contexts = torch.tensor([[0.0, 0.0, 0.0], [1.5, -1.0, 0.5]], dtype=torch.float64)
    masses = [box_mass(flow, (-15, -15), (15, 15), 300, context=c[None]) for c in contexts]
    assert all(abs(m - 1) < 2e-2 for m in masses), masses
    x = torch.randn(50, 2, dtype=torch.float64)
    first, second = (flow.log_prob(x, c[None]) for c in contexts)
    assert (first - second).abs().max() > 1e-3  # the context matters


def test_sampling_takes_one_context_row_per_sample_and_checks_shapes():
    flow = models.maf(2, layers=2, hidden=8, context_features=3)
    c = torch.randn(5, 3)
    assert flow.sample(context=c).shape == (5, 2) and flow.sample(5, context=c[:1]).shape == (5, 2)
    x, log_prob = flow.sample_and_log_prob(context=c)
    torch.testing.assert_close(flow.log_prob(x, c), log_prob, atol=1e-4, rtol=1e-4)
    with pytest.raises(ClayflowError, match="conditional"):
        flow.log_prob(x)
    with pytest.raises(EventShapeError, match=r"context has shape \(5, 3\)"):
        flow.log_prob(x, torch.randn(4, 3))
    with pytest.raises(ClayflowError, match="not conditional"):
        models.maf(2, layers=1, hidden=8).log_prob(x, c)


def test_a_conditional_flow_learns_where_the_context_puts_the_mass(one_thread):
    """x ~ N(R(a) (2, 0), 0.2^2 I) with the angle a as the context (c = (cos a, sin a))."""
    torch.manual_seed(0)
    flow = models.nsf(2, layers=3, hidden=32, bins=6, context_features=2)
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(300):
        angle = torch.rand(128) * 2 * math.pi
        c = torch.stack([angle.cos(), angle.sin()], 1)
        x = 2 * c + 0.2 * torch.randn(128, 2)
        loss = -flow.log_prob(x, c).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    true_entropy = 2 * (0.5 * math.log(2 * math.pi * math.e * 0.04))  # of N(mean, 0.2^2 I)
    assert loss.item() < true_entropy + 0.35, loss.item()
    c = torch.tensor([[0.0, 1.0]])
    samples = flow.sample(2000, context=c)
    assert (samples.mean(0) - torch.tensor([0.0, 2.0])).abs().max() < 0.1


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """``clayflow train --context c`` on a table whose x = (c, c^2) + N(0, 0.1^2 I) given c."""
    folder = tmp_path_factory.mktemp("conditional")
    rng = np.random.default_rng(0)
    c = rng.uniform(-2, 2, 8000)
    x = np.stack([c, c**2], 1) + 0.1 * rng.standard_normal((8000, 2))
    table = folder / "table.csv"
    np.savetxt(table, np.column_stack([c, x]), delimiter=",", header="c,x1,x2", comments="")
    run = folder / "run"
    code = cli("train", "--data", table, "--context", "c", "--model", "maf", "--steps", 1500, "--hidden", 64,
               "--batch-size", 256, "--no-plots", "--out", run, "--threads", 1)  # fmt: skip
    assert code == 0
    return folder, table, run


def test_the_cli_learns_p_x_given_c_to_its_true_entropy(conditional_run):
    _, _, run = conditional_run
    results = json.loads((run / "results.json").read_text())
    true_entropy = 2 * 0.5 * math.log(2 * math.pi * math.e * 0.01)  # of x given c: -1.767 nats
    assert results["test_nll"] < true_entropy + 0.25, results["test_nll"]  # p(x) alone: about +2.5
    assert json.loads((run / "config.json").read_text())["context"] == "c"


def test_sample_draws_at_each_context_row_and_score_gives_log_p_x_given_c(conditional_run, capsys):
    folder, table, run = conditional_run
    contexts = folder / "contexts.csv"
    contexts.write_text("c\n1.5\n-1.0\n")
    out = folder / "draws.csv"
    assert cli("sample", run, "--context", contexts, "--n", 2000, "--out", out) == 0
    draws = np.loadtxt(out, delimiter=",", skiprows=1)
    assert out.read_text().splitlines()[0] == "c,x1,x2"  # the training file's columns, with the context drawn at
    assert draws.shape == (4000, 3) and set(draws[:, 0]) == {1.5, -1.0}
    for value, rows in ((1.5, draws[:2000]), (-1.0, draws[2000:])):
        assert np.allclose(rows[:, 0], value)
        assert np.abs(rows[:, 1:].mean(0) - [value, value**2]).max() < 0.05
        assert np.abs(rows[:, 1:].std(0) - 0.1).max() < 0.03

    scores = folder / "scores.csv"
    assert cli("score", run, "--data", table, "--out", scores) == 0
    values = np.loadtxt(scores, delimiter=",", skiprows=1)
    rows = torch.as_tensor(np.loadtxt(table, delimiter=",", skiprows=1))
    flow = clayflow.load(run).double()
    expected = flow.log_prob(rows[:, 1:], context=rows[:, :1]).detach().numpy()  # columns by name
    assert np.allclose(values[:, 1], expected, atol=1e-3)
    assert np.allclose(values[:, 2], -values[:, 1] / (2 * math.log(2)))  # bits per dim of x alone
    assert "context values lie outside" not in capsys.readouterr().err  # every context was a training one

    contexts.write_text("c\n1.5\n3.0\n-2.5\n")  # c was drawn from U(-2, 2): two rows ask for an extrapolation
    assert cli("sample", run, "--context", contexts, "--n", 10, "--out", folder / "far.csv") == 0
    err = capsys.readouterr().err
    assert "warning: context values lie outside those of the training rows: c in 2 of 3 rows (training rows: -1.99" in err, err
    np.savetxt(folder / "far_rows.csv", [[3.0, 3.0, 9.0], [0.0, 0.0, 0.0]], delimiter=",", header="c,x1,x2", comments="")
    assert cli("score", run, "--data", folder / "far_rows.csv", "--out", folder / "far_scores.csv") == 0
    assert "c in 1 of 2 rows" in capsys.readouterr().err
    low, high = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["column_ranges"][-1]
    # Decimals just beyond the training extremes in float64 that are those extremes in float32, as
    # the rows are held (a file's 14.83 is 14.8299999 in float32)
    ends = [np.nextafter(low, -np.inf), np.nextafter(high, np.inf)]
    assert np.float32(ends[0]) == np.float32(low) and np.float32(ends[1]) == np.float32(high)
    contexts.write_text("c\n" + "\n".join(repr(float(end)) for end in ends) + "\n")
    assert cli("sample", run, "--context", contexts, "--n", 10, "--out", folder / "ends.csv") == 0
    assert "context values lie outside" not in capsys.readouterr().err  # the training rows' own extremes


def test_verify_and_explain_take_each_rows_context(conditional_run, capsys):
    folder, _, run = conditional_run
    assert cli("verify", run, "--rows", 128) == 0
    report = capsys.readouterr().out
    assert "test NLL of results.json reproduced" in report and "at the first example's context" in report
    assert "all checks passed" in report
    assert cli("explain", run, "--rows", 300, "--out", folder / "explain") == 0
    printed = capsys.readouterr().out
    assert "pictures at the first example's context: c = " in printed and "log p(x) (sum)" in printed
    assert {p.name for p in (folder / "explain").iterdir()} == {"contributions.png", "layers.png", "layers.gif"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "{run}", "--out", "{folder}/s.csv"], "give --context FILE"),
        (["score", "{run}", "--data", "{table}", "--method", "ratio", "--out", "{folder}/r.csv"], "use likelihood or typicality"),
        (["train", "--data", "digits", "--conditional", "--model", "cnf", "--out", "{folder}/cnf"], "cannot be conditional"),
        (["train", "--data", "{table}", "--context", "c", "--model", "cnf", "--objective", "fm", "--ot", "--out", "{folder}/ot"], "mixes contexts"),
        (["train", "--data", "{table}", "--context", "c,x1,x2", "--out", "{folder}/all"], "leave at least one column"),
        (["train", "--data", "digits", "--context", "1", "--out", "{folder}/digits"], "names columns of a table"),
        (["train", "--data", "{table}", "--context", "c,x1", "--out", "{folder}/one"], "for one column use maf"),
    ],
)
def test_conditional_runs_refuse_what_they_cannot_do_in_one_line(conditional_run, capsys, argv, message):
    folder, table, run = conditional_run
    before = sorted(p.name for p in folder.iterdir())
    code = cli(*(a.format(run=run, folder=folder, table=table) for a in argv))
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_label_column_that_the_model_reads_is_named_as_such(conditional_run, tmp_path, capsys):
    """``--label-column c`` on a run that reads c as its context: said so (it was "has no column
    'c'", of a file that has one)."""
    _, table, run = conditional_run
    code = cli("score", run, "--data", table, "--label-column", "c", "--out", tmp_path / "s.csv")
    err = capsys.readouterr().err
    assert code == 1 and "--label-column c is a column the model reads" in err and err.count("\n") == 1, err
    assert not (tmp_path / "s.csv").exists()
    rows = np.loadtxt(table, delimiter=",", skiprows=1)[:20]
    labelled = tmp_path / "labelled.csv"  # the labels still in the file, not named as such
    np.savetxt(labelled, np.c_[rows, np.arange(20) % 2], delimiter=",", header="c,x1,x2,is_anom", comments="")
    assert cli("score", run, "--data", labelled, "--out", tmp_path / "s.csv") == 1
    assert "if 'is_anom' holds labels, name it with --label-column" in capsys.readouterr().err
    assert cli("score", run, "--data", labelled, "--label-column", "is_anom", "--out", tmp_path / "s.csv") == 0
    code = cli("score", run, "--data", table, "--labels", tmp_path / "none.csv", "--out", tmp_path / "t.csv")
    assert code == 1 and f"labels file {tmp_path / 'none.csv'} (--labels) does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("adjoint", [False, True])
def test_a_conditional_cnf_is_normalised_per_context_and_trains_by_both_objectives(adjoint, one_thread):
    from clayflow.train.objective import flow_matching, maximum_likelihood

    torch.manual_seed(0)
    flow = models.cnf(2, hidden=16, depth=2, solver="rk4", step_size=0.1, trace="exact", adjoint=adjoint,
                      context_features=1).double()  # fmt: skip
    for p in flow.parameters():
        torch.nn.init.normal_(p, std=0.3)
    masses = [box_mass(flow.eval(), (-8, -8), (8, 8), 120, context=torch.tensor([[c]], dtype=torch.float64))
              for c in (-1.0, 2.0)]  # fmt: skip
    assert all(abs(m - 1) < 2e-2 for m in masses), masses
    rows = torch.randn(64, 3, dtype=torch.float64)
    x, c = flow.split_rows(rows)
    assert (flow.log_prob(x, c) - flow.log_prob(x, -c)).abs().max() > 1e-3
    z, _ = flow(x, c)
    torch.testing.assert_close(flow.inverse(z, c)[0], x, atol=1e-6, rtol=0)
    flow.train()
    for objective in (maximum_likelihood, flow_matching):
        flow.zero_grad()
        objective(flow, rows).loss.backward()
        weight = flow.transform[0].dynamics.layers[0].map.weight  # (hidden, D + K)
        assert weight.shape == (16, 3) and weight.grad[:, 2].abs().sum() > 0  # the context's column learns


def test_fit_trains_a_conditional_flow_from_rows_of_x_and_c(one_thread):
    torch.manual_seed(0)
    c = torch.rand(3000, 1) * 4 - 2
    rows = torch.cat([torch.cat([c, c**2], 1) + 0.1 * torch.randn(3000, 2), c], 1)
    flow = models.maf(2, hidden=32, context_features=1)
    result = clayflow.fit(flow, rows[:2400], val=rows[2400:2700], test=rows[2700:], steps=400, progress=False)
    true_entropy = 2 * 0.5 * math.log(2 * math.pi * math.e * 0.01)
    # Without c no model can go below H(x) >= H(c) + H(x2 | x1, c) = log 4 - 0.88 = 0.50 nats.
    assert result.test_nll < true_entropy + 0.6, result.test_nll
    assert result.test_bpd == pytest.approx(result.test_nll / (2 * math.log(2)))  # x's 2 columns, not 3 with c
    class Rows(torch.utils.data.Dataset):  # the same rows as a map-style dataset, read one by one
        def __init__(self, part):
            self.part = part

        def __len__(self):
            return len(self.part)

        def __getitem__(self, i):
            return self.part[i]

    result = clayflow.fit(flow, Rows(rows[:2400]), test=Rows(rows[2700:]), steps=5, progress=False)
    assert result.test_bpd == pytest.approx(result.test_nll / (2 * math.log(2)))


def test_a_conditional_fit_checkpointed_before_bits_per_dim_counted_x_alone_resumes(tmp_path, one_thread):
    """Such runs recorded their rows' width D + K as the data's shape; the data are the same."""
    torch.manual_seed(0)
    rows = torch.cat([torch.randn(300, 2), torch.rand(300, 1)], 1)
    flow = models.maf(2, hidden=8, context_features=1)
    clayflow.fit(flow, rows[:200], val=rows[200:], steps=10, progress=False, out=tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["data_fingerprint"]["shape"] == [2]
    checkpoint["data_fingerprint"]["shape"] = [3]  # as clayflow.fit wrote it before 2026-12-04
    torch.save(checkpoint, last)
    resumed = clayflow.fit(flow, rows[:200], val=rows[200:], steps=20, progress=False, out=tmp_path / "run", resume=True)
    assert resumed.steps == 20
    wider = torch.cat([rows[:, :1], rows], 1)  # other data: 3 columns and the context
    with pytest.raises(clayflow.ClayflowError, match=r"examples of shape \(2,\) then, \(3,\) now"):
        clayflow.fit(flow, wider[:200], val=wider[200:], steps=30, progress=False, out=tmp_path / "run", resume=True)


def test_a_conditional_cnf_lets_go_of_its_context_after_each_solve():
    import copy

    flow = models.cnf(2, hidden=8, depth=1, solver="rk4", step_size=0.25, context_features=1, context_embedding=4)
    x, c = torch.randn(5, 2), torch.randn(5, 1)
    flow.log_prob(x, c).mean().backward()
    copy.deepcopy(flow)  # a field holding the batch's encoded context (a non-leaf) could not be copied
    cnf = flow.transform[0]
    _, states = cnf.trajectory(torch.randn(5, 2), steps=3, context=flow.encoded_context(c, 5).detach())
    assert states.shape == (3, 5, 2)


def test_a_headerless_conditional_table_keeps_the_files_column_order(tmp_path, capsys):
    """The context is column 2 of 3: score, sample and --discrete all count columns as the
    file does, although the model holds them as (x, context)."""
    rng = np.random.default_rng(0)
    c = rng.integers(0, 4, 600).astype(float)
    rows = np.column_stack([c + 0.1 * rng.standard_normal(600), c, -c + 0.1 * rng.standard_normal(600)])
    table = tmp_path / "rows.csv"
    np.savetxt(table, rows, delimiter=",")
    run = tmp_path / "run"
    assert cli("train", "--data", table, "--context", 2, "--model", "maf", "--steps", 20, "--no-plots", "--out", run) == 0
    scores = tmp_path / "scores.csv"
    assert cli("score", run, "--data", table, "--out", scores) == 0
    flow = clayflow.load(run).double()
    torch.manual_seed(1234)  # no dequantized column: the noise does not matter
    values = torch.as_tensor(rows)
    expected = flow.log_prob(values[:, [0, 2]], context=values[:, [1]]).detach().numpy()
    assert np.allclose(np.loadtxt(scores, delimiter=",", skiprows=1)[:, 1], expected, atol=1e-3)
    contexts = tmp_path / "contexts.csv"
    contexts.write_text("3\n")
    draws = tmp_path / "draws.csv"
    assert cli("sample", run, "--context", contexts, "--n", 4, "--out", draws) == 0
    assert np.all(np.loadtxt(draws, delimiter=",", skiprows=1)[:, 1] == 3)  # the context in its own column
    assert draws.read_text().splitlines()[0] == "x1,x2,x3"
    capsys.readouterr()
    assert cli("train", "--data", table, "--context", 2, "--discrete", 2, "--out", tmp_path / "d") == 2
    assert "are context columns" in capsys.readouterr().err
    rows[:, 2] = rows[:, 0]  # file column 3 repeats column 1: no density
    np.savetxt(table, rows, delimiter=",")
    assert cli("train", "--data", table, "--context", 2, "--out", tmp_path / "flat") == 1
    assert "column 3 is a linear combination of column 1" in capsys.readouterr().err  # the file's numbers


def test_data_that_the_context_determines_are_refused_and_related_contexts_are_not(tmp_path, capsys):
    """Given c, a data column that is a linear combination of context (and data) columns has no
    density: the NLL fell without bound (-3.5 nats on iris with a copy of a column as context,
    and falling). A context whose columns are related among themselves alone (one-hot codes
    summing to 1) is fine: no density is asked of it."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 400))
    code = rng.integers(0, 3, 400)
    one_hot = np.eye(3)[code]
    table, codes = tmp_path / "rows.csv", tmp_path / "codes.csv"
    np.savetxt(table, np.column_stack([a, b, 2 * a - b + 1]), delimiter=",")
    np.savetxt(codes, np.column_stack([a, b, *one_hot.T]), delimiter=",")
    options = ["--model", "maf", "--steps", 2, "--discrete", "none", "--no-plots"]
    assert cli("train", "--data", table, *options, "--context", "3", "--out", tmp_path / "flat") == 1
    err = capsys.readouterr().err
    assert "column 3 is a linear combination of columns 1, 2" in err and err.count("\n") == 1, err
    assert cli("train", "--data", codes, *options, "--context", "3,4,5", "--out", tmp_path / "codes") == 0
