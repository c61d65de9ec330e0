"""Option and input validation (issue 14, "Nothing lost"): every bad option or input is one
line ``clayflow: error: ...``, exit 2 for options (1 for a runtime problem), no traceback, and
nothing created: no run folder, no output file.

Each row names the words the line must hold, so a refusal for another reason does not pass.
"""

import os
import subprocess
import sys

import pytest
import torch

from test_cli import run_cli

USAGE, RUNTIME = 2, 1
QUICK = ["--steps", "2", "--hidden", "4", "--depth", "1", "--eval-every", "1", "--no-plots", "--no-progress"]
CNF = ["--model", "cnf"]
RK4 = [*CNF, "--solver", "rk4"]
FM = [*CNF, "--objective", "fm"]
# A CUDA device this machine does not have, whether or not it has CUDA.
MISSING_CUDA = f"cuda:{max(7, torch.cuda.device_count())}"


def refused(capsys, tmp_path, *argv, code=USAGE) -> str:
    """Run the CLI in ``tmp_path``; check one ``clayflow: error:`` line, the exit code, no
    traceback and no run folder (``tmp_path/o`` or ``tmp_path/runs``); return the line."""
    got, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("clayflow: error:"), err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()
    return lines[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- non-finite numbers ----------------------------------------------------------------------

# (field, value, options that make the field apply)
NON_FINITE = [
    ("lr", "nan", []),
    ("lr", "inf", []),
    ("weight-decay", "nan", []),
    ("weight-decay", "inf", []),
    ("clip", "nan", []),
    ("clip", "inf", []),
    ("ema", "nan", []),
    ("alpha", "nan", []),
    ("kinetic", "nan", CNF),
    ("kinetic", "inf", CNF),
    ("jacobian", "nan", CNF),
    ("t1", "inf", CNF),
    ("atol", "nan", CNF),
    ("atol", "inf", CNF),
    ("rtol", "nan", CNF),
    ("step-size", "nan", RK4),
    ("step-size", "inf", RK4),
]


@pytest.mark.parametrize("field, value, extra", NON_FINITE, ids=[f"--{f} {v}" for f, v, _ in NON_FINITE])
def test_non_finite_flags_are_refused(in_tmp, capsys, field, value, extra):
    line = refused(capsys, in_tmp, "train", *QUICK, *extra, f"--{field}", value, "--out", in_tmp / "o")
    assert f"{field.replace('-', '_')} must be a finite number, got {value}" in line


# JSON has no inf, but 1e400 parses as one.
JSON_NON_FINITE = [("lr", []), ("weight_decay", []), ("clip", []), ("alpha", []), ("kinetic", CNF),
                   ("t1", CNF), ("atol", CNF), ("step_size", RK4)]  # fmt: skip


@pytest.mark.parametrize("field, extra", JSON_NON_FINITE, ids=[f for f, _ in JSON_NON_FINITE])
def test_non_finite_config_values_are_refused(in_tmp, capsys, field, extra):
    config = in_tmp / "config.json"
    config.write_text(f'{{"{field}": 1e400}}')
    line = refused(capsys, in_tmp, "train", *QUICK, *extra, "--config", config, "--out", in_tmp / "o")
    assert f"{config}: {field} must be a finite number, got inf" in line


# -- sampling temperature ---------------------------------------------------------------------


def test_infinite_temperature_is_refused(good_run, in_tmp, capsys):
    out = in_tmp / "s.csv"
    line = refused(capsys, in_tmp, "sample", good_run, "--out", out, "--temperature", "inf")
    assert "--temperature must be > 0 and finite, got inf" in line and not out.exists()


def test_overflowing_temperature_writes_nothing(good_run, in_tmp, capsys):
    """1e300 draws overflow float32: a runtime error naming the temperature, no NaN file."""
    out = in_tmp / "s.csv"
    line = refused(capsys, in_tmp, "sample", good_run, "--n", "20", "--out", out, "--temperature", "1e300",
                   code=RUNTIME)  # fmt: skip
    assert "20 of 20 samples at temperature 1e+300 are not finite" in line and "lower --temperature" in line
    assert not out.exists()


# -- CNF solver and objective options ---------------------------------------------------------

CNF_OPTIONS = [
    ("zero step", [*RK4, "--step-size", "0"], "step_size must be > 0"),
    ("negative step", [*RK4, "--step-size", "-0.1"], "step_size must be > 0"),
    ("negative atol", [*CNF, "--atol", "-1"], "atol must be >= 0"),
    ("both tolerances 0", [*CNF, "--atol", "0", "--rtol", "0"], "--atol and --rtol are both 0"),
    ("step with dopri5", [*CNF, "--step-size", "0.1"], "but dopri5 adapts its steps"),
    ("step with bosh3", [*CNF, "--solver", "bosh3", "--step-size", "0.1"], "but bosh3 adapts its steps"),
    ("atol with rk4", [*RK4, "--atol", "1e-3"], "--atol sets the error tolerance of adaptive solvers"),
    ("rtol with euler", [*CNF, "--solver", "euler", "--rtol", "1e-3"], "--rtol sets the error tolerance"),
    ("kinetic with fm", [*FM, "--kinetic", "0.1"], "--kinetic regularises the ODE solves"),
    ("jacobian with fm", [*FM, "--jacobian", "0.1"], "--jacobian regularises the ODE solves"),
    ("trace with fm", [*FM, "--trace", "exact"], "--trace is the divergence while training"),
    ("adjoint with fm", [*FM, "--adjoint"], "--adjoint backpropagates through ODE solves"),
    ("learn-t1 with fm", [*FM, "--learn-t1"], "--learn-t1 learns T by likelihood"),
    ("actnorm with one block", [*CNF, "--actnorm"], "--actnorm goes between CNF blocks"),
    ("batch-norm with one block", [*CNF, "--batch-norm"], "--batch-norm goes between CNF blocks"),
    ("huge augment", [*CNF, "--augment", "10000000000"], "augment must be at most 1024"),
]


@pytest.mark.parametrize("case, argv, words", CNF_OPTIONS, ids=[c for c, _, _ in CNF_OPTIONS])
def test_cnf_options_that_cannot_apply_are_refused(in_tmp, capsys, case, argv, words):
    assert words in refused(capsys, in_tmp, "train", *QUICK, *argv, "--out", in_tmp / "o")


# -- devices ----------------------------------------------------------------------------------

DEVICES = ["meta", "mps", "foo", MISSING_CUDA]


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_unsupported_devices_are_refused_by_train(in_tmp, capsys, device):
    line = refused(capsys, in_tmp, "train", *QUICK, "--device", device, "--out", in_tmp / "o")
    assert f"unknown device {device!r}" in line


@pytest.mark.parametrize("device", DEVICES)
def test_bad_devices_in_a_config_file_name_the_file(in_tmp, capsys, device):
    """Checked with the other options, so the line names the file that holds the device."""
    config = in_tmp / "config.json"
    config.write_text(f'{{"device": "{device}"}}')
    line = refused(capsys, in_tmp, "train", *QUICK, "--config", config, "--out", in_tmp / "o")
    assert f"{config}: " in line and f"device {device!r}" in line


def test_a_saved_config_may_name_a_device_this_machine_lacks():
    """A run trained on a GPU keeps ``device: cuda`` in its config.json; reading it back on
    another machine (to resume with ``--device cpu``) checks the name, not the hardware."""
    from clayflow.errors import UsageError
    from clayflow.train.config import config_from_dict

    assert config_from_dict({"device": MISSING_CUDA}, here=False).device == MISSING_CUDA
    with pytest.raises(UsageError, match="requested but"):
        config_from_dict({"device": MISSING_CUDA})
    with pytest.raises(UsageError, match="unknown device 'meta'"):
        config_from_dict({"device": "meta"}, here=False)


@pytest.mark.parametrize("verb", ["sample", "score"])
@pytest.mark.parametrize("device", DEVICES)
def test_bad_devices_are_usage_errors_of_sample_and_score(in_tmp, capsys, verb, device):
    """A usage error, found before the run is read (here it does not even exist)."""
    data = ["--data", "moons"] if verb == "score" else []
    out = in_tmp / "s.csv"
    line = refused(capsys, in_tmp, verb, in_tmp / "norun", *data, "--out", out, "--device", device)
    assert "argument --device: " in line and f"device {device!r}" in line and not out.exists()


# -- seeds ------------------------------------------------------------------------------------


def test_seed_beyond_torch_range_is_refused_by_train(in_tmp, capsys):
    from clayflow.train.config import config_from_dict

    line = refused(capsys, in_tmp, "train", *QUICK, "--seed", str(2**64), "--out", in_tmp / "o")
    assert "seed must be in [0, 2**64 - 1]" in line
    assert config_from_dict({"seed": 2**64 - 1}).seed == 2**64 - 1  # the largest is accepted,
    torch.manual_seed(2**64 - 1), torch.Generator().manual_seed(2**64 - 1)  # as torch accepts it


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_beyond_torch_range_is_refused_by_sample(good_run, in_tmp, capsys, seed):
    out = in_tmp / "s.csv"
    line = refused(capsys, in_tmp, "sample", good_run, "--out", out, "--seed", str(seed))
    assert "--seed must be in [0, 2**64 - 1]" in line and not out.exists()


# -- checkpoints that are not regular files ---------------------------------------------------


def _sample_in_a_process(run, out, cwd):
    """``clayflow sample`` in a subprocess; the timeout only turns a hang into a failure."""
    return subprocess.run(
        [sys.executable, "-m", "clayflow.cli.main", "sample", str(run), "--n", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=cwd, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("where", ["given", "in a run"])
def test_fifo_checkpoint_is_refused_not_read(tmp_path, where):
    if where == "given":
        fifo = run = tmp_path / "ckpt.pt"
    else:  # a run directory whose best.pt is a FIFO
        run = tmp_path / "run"
        (run / "checkpoints").mkdir(parents=True)
        fifo = run / "checkpoints" / "best.pt"
    os.mkfifo(fifo)
    proc = _sample_in_a_process(run, tmp_path / "s.csv", tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == RUNTIME and len(lines) == 1, proc.stderr
    assert lines[0] == (
        f"clayflow: error: {fifo} is a FIFO (named pipe), not a regular file; "
        "give a run directory or a checkpoint file"
    )
    assert not (tmp_path / "s.csv").exists()


def test_device_file_checkpoint_is_refused(in_tmp, capsys):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    line = refused(capsys, in_tmp, "sample", "/dev/zero", "--out", in_tmp / "s.csv", code=RUNTIME)
    assert "/dev/zero is a character device, not a regular file" in line


# -- argparse errors --------------------------------------------------------------------------

PARSE_ERRORS = [
    ("train", ["train", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
    ("train", ["train", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    ("sample", ["sample", "RUN"], "the following arguments are required: --out"),
    ("score", ["score", "RUN", "--out", "s.csv"], "the following arguments are required: --data"),
]


@pytest.mark.parametrize("verb, argv, words", PARSE_ERRORS, ids=[" ".join(a) for _, a, _ in PARSE_ERRORS])
def test_argparse_errors_start_like_every_error(in_tmp, capsys, verb, argv, words):
    line = refused(capsys, in_tmp, *argv)
    assert words in line and line.endswith(f"(see clayflow {verb} --help)")
