"""Datasets: toys, bundled tables and the user's own files, with their errors."""

import numpy as np
import pytest
import torch

from clayflow.data import TOY_SIZES, load_dataset, standardization
from clayflow.data.tabular import read_table
from clayflow.data.toys import TOYS
from clayflow.errors import ClayflowError


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toys_are_deterministic_2d_and_finite(name):
    rng = np.random.default_rng(3)
    a, b = TOYS[name](101, rng), TOYS[name](101, np.random.default_rng(3))
    assert a.shape == (101, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_splits_are_deterministic():
    first, second = load_dataset("moons"), load_dataset("moons")
    assert first.train.shape == (TOY_SIZES["train"], 2) and torch.equal(first.test, second.test)
    wine = load_dataset("wine")
    assert wine.features == 13 and len(wine.train) + len(wine.val) + len(wine.test) == 178
    assert torch.equal(wine.val, load_dataset("wine").val)


def test_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text("a, b\n1, 2\n3.5, -4e2\n")
    values, columns = read_table(tmp_path / "h.csv")
    assert columns == ["a", "b"] and values.tolist() == [[1, 2], [3.5, -400]]
    (tmp_path / "n.csv").write_text("1;2\n3;4\n")
    assert read_table(tmp_path / "n.csv")[0].tolist() == [[1, 2], [3, 4]]
    np.save(tmp_path / "x.npy", np.arange(6.0).reshape(3, 2))
    assert read_table(tmp_path / "x.npy")[0].shape == (3, 2)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("a,b\n", "header but no data"),
        ("1,2\n3,x\n", "line 2, column 2: 'x' is not a number"),
        ("1,2\n3,nan\n", "row 2, column 2 is nan"),
        ("1,2\ninf,2\n", "row 2, column 1 is inf"),
        ("1,2\n3\n", "line 2 has 1 values, expected 2"),
        ("1,1e39\n", "beyond float32"),
    ],
)
def test_bad_csv_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ClayflowError, match=message):
        read_table(path)


def test_bad_files_refused(tmp_path):
    with pytest.raises(ClayflowError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.csv"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ClayflowError, match="object arrays are refused"):
        read_table(tmp_path / "obj.npy")
    (tmp_path / "one.csv").write_text("1,2\n")
    with pytest.raises(ClayflowError, match="at least 10"):
        load_dataset(str(tmp_path / "one.csv"))
    with pytest.raises(ClayflowError, match="unknown dataset 'mooons'"):
        load_dataset("mooons")


def test_constant_column_is_refused_and_huge_values_standardise():
    x = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    with pytest.raises(ClayflowError, match="column\\(s\\) 2 are constant"):
        standardization(x)
    mean, std = standardization(torch.tensor([[1e30, 1.0], [3e30, 2.0]]))
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
