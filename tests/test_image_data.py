"""Image datasets from files the tests write: MNIST IDX, CIFAR-10 pickles, image folders."""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from clayflow.data import load_dataset
from clayflow.data.images import read_cifar_batch, read_idx
from clayflow.errors import ClayflowError

RNG = np.random.default_rng(0)


def write_idx(path, images, compress=False):
    header = bytes([0, 0, 0x08, images.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in images.shape)
    raw = header + images.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as file:
            file.write(raw)
    else:
        path.write_bytes(raw)


@pytest.fixture
def mnist_dir(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", RNG.integers(0, 256, (40, 28, 28)), compress=True)
    write_idx(tmp_path / "t10k-images.idx3-ubyte", RNG.integers(0, 256, (12, 28, 28)))
    return tmp_path


def test_mnist_reads_plain_gz_and_both_spellings(mnist_dir):
    data = load_dataset(f"mnist:{mnist_dir}")
    assert data.train.shape == (36, 1, 28, 28) and data.val.shape == (4, 1, 28, 28)
    assert data.test.shape == (12, 1, 28, 28) and data.train.dtype == torch.uint8 and data.levels == 256
    raw = read_idx(mnist_dir / "t10k-images.idx3-ubyte")
    assert torch.equal(data.test[:, 0], torch.from_numpy(raw.copy()))  # published test split kept whole


def test_mnist_names_the_missing_and_the_malformed_file(mnist_dir):
    os.remove(mnist_dir / "t10k-images.idx3-ubyte")
    with pytest.raises(ClayflowError, match="t10k-images-idx3-ubyte .*missing"):
        load_dataset(f"mnist:{mnist_dir}")
    write_idx(mnist_dir / "t10k-images-idx3-ubyte", RNG.integers(0, 256, (12, 28, 28)))
    path = mnist_dir / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ClayflowError, match="t10k-images-idx3-ubyte is truncated"):
        load_dataset(f"mnist:{mnist_dir}")
    path.write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(ClayflowError, match="not an IDX file"):
        load_dataset(f"mnist:{mnist_dir}")


def _cifar_batch(n):
    return {
        b"batch_label": b"testing batch",
        b"labels": list(RNG.integers(0, 10, n)),
        b"data": RNG.integers(0, 256, (n, 3072)).astype(np.uint8),
        b"filenames": [b"x.png"] * n,
    }


@pytest.fixture
def cifar_dir(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as file:
            pickle.dump(_cifar_batch(6), file, protocol=2)
    return tmp_path


def test_cifar10_reads_the_python_batches(cifar_dir):
    data = load_dataset(f"cifar10:{cifar_dir}")
    assert data.train.shape == (27, 3, 32, 32) and data.val.shape == (3, 3, 32, 32)
    assert data.test.shape == (6, 3, 32, 32) and data.levels == 256


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar10_refuses_pickles_that_hold_code(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = cifar_dir / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as file:
        pickle.dump({b"data": _Exploit()}, file)
    with pytest.raises(ClayflowError, match="refusing to load (posix|os).system"):
        load_dataset(f"cifar10:{cifar_dir}")
    assert not (tmp_path / "pwned").exists()


def test_cifar10_names_missing_truncated_and_wrong_batches(cifar_dir):
    folder = cifar_dir / "cifar-10-batches-py"
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ClayflowError, match="data_batch_3 is truncated"):
        read_cifar_batch(path)
    with open(path, "wb") as file:
        pickle.dump({b"data": np.zeros((4, 10), np.uint8)}, file)
    with pytest.raises(ClayflowError, match="data_batch_3 has no 'data' array"):
        load_dataset(f"cifar10:{cifar_dir}")
    os.remove(folder / "test_batch")
    with pytest.raises(ClayflowError, match="test_batch missing"):
        load_dataset(f"cifar10:{cifar_dir}")


def write_images(folder, n, size=(8, 6), mode="L"):
    folder.mkdir(exist_ok=True)
    channels = 1 if mode == "L" else 3
    for i in range(n):
        pixels = RNG.integers(0, 256, (size[1], size[0], channels)).astype(np.uint8)
        Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(folder / f"img{i:02d}.png")
    return folder


def test_image_folder_grey_and_rgb(tmp_path):
    grey = write_images(tmp_path / "grey", 20)
    (grey / "notes.txt").write_text("ignored")
    data = load_dataset(f"images:{grey}")
    assert data.train.shape == (16, 1, 6, 8) and data.levels == 256
    picture = np.array(Image.open(grey / "img00.png"))
    assert any(
        torch.equal(torch.from_numpy(picture), split[i, 0])
        for split in (data.train, data.val, data.test)
        for i in range(len(split))
    )
    Image.fromarray(RNG.integers(0, 256, (6, 8, 3)).astype(np.uint8)).save(grey / "colour.jpg")
    assert load_dataset(f"images:{grey}").train.shape[1] == 3  # one RGB image makes the set RGB


@pytest.mark.parametrize(
    "spoil, message",
    [
        (
            lambda d: Image.fromarray(np.zeros((9, 8), np.uint8)).save(d / "big.png"),
            "one size: big.png is 8x9",
        ),
        (
            lambda d: (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really"),
            "cannot read image .*broken.png",
        ),
        (lambda d: Image.fromarray(np.zeros((6, 8), np.uint16)).save(d / "deep.png"), "16-bit"),
    ],
)
def test_image_folder_errors_name_the_file(tmp_path, spoil, message):
    folder = write_images(tmp_path / "imgs", 12)
    spoil(folder)
    with pytest.raises(ClayflowError, match=message):
        load_dataset(f"images:{folder}")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("images:/no/such/folder", "is not a folder"),
        ("mnist:", "needs a folder"),
        ("patches:1", "SIZE >= 2"),
        ("patches:big", "expected patches"),
    ],
)
def test_bad_image_specs(spec, message):
    with pytest.raises(ClayflowError, match=message):
        load_dataset(spec)


def test_builtin_image_sets():
    digits = load_dataset("digits")
    assert digits.train.shape[1:] == (1, 8, 8) and digits.levels == 17 and int(digits.train.max()) == 16
    patches = load_dataset("patches:4:rgb")
    assert patches.train.shape[1:] == (3, 4, 4) and patches.levels == 256
    n = len(patches.train) + len(patches.val) + len(patches.test)
    assert n == 2 * (427 // 4) * (640 // 4)  # non-overlapping patches of both photographs
