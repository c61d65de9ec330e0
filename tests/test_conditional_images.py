"""Class-conditional images p(image | class): labelled readers for every image source, image
couplings that take a context, and the CLI from training to a grid with one row per class."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import clayflow
from clayflow import models
from clayflow import transforms as T
from clayflow.cli.main import main
from clayflow.data import load_dataset
from clayflow.errors import ClayflowError, UsageError
from clayflow.train.evaluate import EVAL_SEED
from test_image_data import _cifar_batch, write_idx
from test_transforms import brute_force_logabsdet
from zoo import randomize

RNG = np.random.default_rng(1)


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def test_digits_carry_their_class_as_one_more_channel():
    data = load_dataset("digits", classes=True)
    plain = load_dataset("digits")
    assert data.context_features == 10 and data.classes == [str(d) for d in range(10)]
    assert data.train.shape == (1438, 2, 8, 8) and data.event_shape == (1, 8, 8) and data.dims == 64
    assert torch.equal(data.train[:, :1], plain.train)  # the same split, the same images
    labels = data.train[:, 1]
    assert (labels == labels[:, :1, :1]).all() and set(labels[:, 0, 0].tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    bunch = load_digits()
    first = data.train[0]
    match = (torch.from_numpy(bunch.images.astype(np.uint8)) == first[0]).flatten(1).all(1).nonzero().flatten()
    assert bunch.target[match[0]] == first[1, 0, 0]


def test_mnist_and_cifar_read_their_labels(tmp_path):
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    write_idx(mnist / "train-images-idx3-ubyte", RNG.integers(0, 256, (40, 28, 28)))
    write_idx(mnist / "t10k-images-idx3-ubyte", RNG.integers(0, 256, (12, 28, 28)))
    with pytest.raises(ClayflowError, match="train-labels-idx1-ubyte .*missing"):
        load_dataset(f"mnist:{mnist}", classes=True)
    labels = RNG.integers(0, 10, 12)
    write_idx(mnist / "train-labels-idx1-ubyte", RNG.integers(0, 10, 40))
    write_idx(mnist / "t10k-labels-idx1-ubyte", labels, compress=True)
    data = load_dataset(f"mnist:{mnist}", classes=True)
    assert data.test.shape == (12, 2, 28, 28) and torch.equal(data.test[:, 1, 0, 0], torch.from_numpy(labels).byte())
    write_idx(mnist / "train-labels-idx1-ubyte", RNG.integers(0, 10, 39))
    with pytest.raises(ClayflowError, match="39 labels .* for 40 images"):
        load_dataset(f"mnist:{mnist}", classes=True)

    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    batches = {name: _cifar_batch(6) for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]}
    for name, batch in batches.items():
        with open(cifar / name, "wb") as file:
            pickle.dump(batch, file, protocol=2)
    data = load_dataset(f"cifar10:{tmp_path}", classes=True)
    assert data.classes[0] == "airplane" and data.event_shape == (3, 32, 32)
    assert data.test[:, 3, 0, 0].tolist() == [int(v) for v in batches["test_batch"][b"labels"]]


def test_an_image_folder_with_one_subfolder_per_class(tmp_path):
    for k, name in enumerate(["cat", "dog", "eel"]):
        (tmp_path / name).mkdir()
        for i in range(5):
            pixels = RNG.integers(0, 256, (6, 6, 3) if name == "dog" else (6, 6)).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    data = load_dataset(f"images:{tmp_path}", classes=True)
    assert data.classes == ["cat", "dog", "eel"] and data.event_shape == (3, 6, 6)  # grey classes become RGB
    every = torch.cat([data.train, data.val, data.test])
    assert sorted(every[:, 3, 0, 0].tolist()) == [0] * 5 + [1] * 5 + [2] * 5
    os.remove(tmp_path / "dog" / "0.png")
    Image.fromarray(np.zeros((7, 6), np.uint8)).save(tmp_path / "dog" / "0.png")
    with pytest.raises(ClayflowError, match="one size"):
        load_dataset(f"images:{tmp_path}", classes=True)


@pytest.mark.parametrize("spec, message", [("patches", "has no classes"), ("wine", "--context")])
def test_sources_without_classes_are_refused(spec, message):
    with pytest.raises(UsageError, match=message):
        load_dataset(spec, classes=True)


@pytest.mark.parametrize("mask", ["checkerboard", "channels"])
def test_image_couplings_take_a_context_exactly(mask):
    """Invertible at each context, with the log-det of the brute-force Jacobian (float64),
    and the context changes the map."""
    torch.manual_seed(0)
    shape = (2, 4, 4)
    m = T.checkerboard_mask(shape, 0) if mask == "checkerboard" else T.half_mask(2, 0)
    coupling = randomize(T.AffineCoupling(m, lambda i, o: torch.nn.Conv2d(i, o, 3, padding=1), 3)).double()
    x = torch.randn(4, *shape, dtype=torch.float64)
    context = torch.randn(4, 3, dtype=torch.float64)
    z, logabsdet = coupling(x, context)
    torch.testing.assert_close(coupling.inverse(z, context)[0], x, atol=1e-10, rtol=0)
    for i in range(len(x)):
        at = context[i : i + 1]
        expected = brute_force_logabsdet(lambda v, at=at: coupling(v, at), x[i : i + 1])
        torch.testing.assert_close(logabsdet[i : i + 1], expected, atol=1e-8, rtol=0)
    assert (coupling(x, context.flip(0))[0] - z).abs().max() > 1e-3


@pytest.mark.parametrize("builder", [models.realnvp_image, models.glow_image])
def test_class_conditional_image_models_depend_on_the_class(builder):
    torch.manual_seed(0)
    flow = randomize(builder((1, 8, 8), 17, context_features=10), scale=0.05).double().eval()
    if builder is models.glow_image:
        for module in flow.modules():
            if hasattr(module, "initialized"):
                module.initialized.fill_(True)
    rows = torch.cat([torch.randint(0, 17, (4, 1, 8, 8)), torch.tensor([0, 3, 3, 9]).view(4, 1, 1, 1).expand(4, 1, 8, 8)], 1)
    x, context = flow.split_rows(rows)
    assert x.shape == (4, 1, 8, 8) and context.argmax(1).tolist() == [0, 3, 3, 9]
    log_prob = flow.log_prob(x, context)
    assert (log_prob - flow.log_prob(x, context.roll(1, 1))).abs().min() > 1e-4  # every image's class matters
    samples = flow.sample(context=torch.eye(10, dtype=torch.float64))
    assert samples.shape == (10, 1, 8, 8)


def test_the_cli_trains_samples_a_grid_per_class_and_scores(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "--data", "digits", "--conditional", "--model", "glow", "--layers", 2, "--hidden", 8,
               "--steps", 6, "--eval-every", 3, "--out", run) == 0  # fmt: skip
    assert (run / "plots/samples.png").exists()
    flow = clayflow.load(run)
    assert flow.context_features == 10
    grid = tmp_path / "grid.npy"
    assert cli("sample", run, "--n", 3, "--out", grid) == 0
    assert np.load(grid).shape == (30, 1, 8, 8)
    assert cli("sample", run, "--n", 3, "--out", tmp_path / "grid.png") == 0
    scores = tmp_path / "scores.csv"
    assert cli("score", run, "--data", "digits", "--draws", 1, "--out", scores) == 0  # one draw: comparable below
    values = np.loadtxt(scores, delimiter=",", skiprows=1)
    test = load_dataset("digits", classes=True).test
    x, context = flow.split_rows(test.float())
    torch.manual_seed(EVAL_SEED)  # the dequantization noise of the first (here the only) chunk
    assert np.allclose(values[:, 1], flow.log_prob(x, context).detach().double().numpy(), rtol=1e-4, atol=1e-3)
    capsys.readouterr()
    assert cli("score", run, "--data", grid, "--out", tmp_path / "s.csv") == 1
    assert "give labelled images" in capsys.readouterr().err
    assert cli("verify", run, "--rows", 32) == 0  # each image checked under its own class
    assert "all checks passed" in capsys.readouterr().out
    assert cli("explain", run, "--rows", 40) == 0
    assert "pictures at the first example's context: class " in capsys.readouterr().out
    assert {p.name for p in (run / "explain").iterdir()} == {"contributions.png", "scales.png"}


def test_class_folders_are_matched_by_name_and_loose_or_hidden_files_are_handled(tmp_path, capsys):
    from clayflow.cli.inputs import examples_to_score
    from clayflow.train.checkpoint import read_checkpoint

    for folder, names in (("train", ["a", "b", "c"]), ("new", ["c", "b"]), ("odd", ["a", "zebra"])):
        for name in names:
            (tmp_path / folder / name).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(RNG.integers(0, 256, (4, 4)).astype(np.uint8)).save(tmp_path / folder / name / f"{i}.png")
    (tmp_path / "train" / "a" / "._0.png").write_bytes(b"AppleDouble")  # macOS metadata: skipped
    run = tmp_path / "run"
    assert cli("train", "--data", f"images:{tmp_path / 'train'}", "--conditional", "--model", "glow", "--layers", 1,
               "--hidden", 4, "--scales", 1, "--steps", 2, "--no-plots", "--out", run) == 0  # fmt: skip
    payload = read_checkpoint(run, prefer_best=True)
    assert payload["classes"] == ["a", "b", "c"]
    x, files, _ = examples_to_score(f"images:{tmp_path / 'new'}", payload)
    classes = dict(zip(files, x[:, -1, 0, 0].tolist()))
    assert classes["c/0.png"] == 2 and classes["b/0.png"] == 1  # the run's class numbers, by name
    assert cli("score", run, "--data", f"images:{tmp_path / 'new'}", "--out", tmp_path / "new.csv") == 0
    capsys.readouterr()
    assert cli("score", run, "--data", f"images:{tmp_path / 'odd'}", "--out", tmp_path / "odd.csv") == 1
    assert "zebra" in capsys.readouterr().err
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "train" / "loose.png")
    with pytest.raises(ClayflowError, match="beside the class subfolders"):
        load_dataset(f"images:{tmp_path / 'train'}", classes=True)
