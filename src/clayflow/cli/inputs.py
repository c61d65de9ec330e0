"""What ``clayflow score`` reads: the examples of a file, an image folder or a dataset,
checked against the trained model's data shape and levels."""

from __future__ import annotations

import numpy as np
import torch

from clayflow.errors import ClayflowError


def examples_to_score(
    data: str, spec: dict, data_columns: list[str] | None = None
) -> tuple[torch.Tensor, list[str] | None]:
    """The examples of ``data`` as a tensor, checked against the model's data shape:
    every image of ``images:DIR`` (and their file names), the rows of a table file, or a
    dataset's test split.

    Table columns are matched to the training columns (``data_columns``) by name when both
    have names, else by position. Shape: ``(N, *event_shape)`` float32; names: None but for
    a folder of images.
    """
    files = None
    from clayflow.data import load_dataset, looks_like_path
    from clayflow.data.images import is_image_spec, load_image_source
    from clayflow.data.tabular import align_columns, read_table

    shape = tuple(spec.get("event_shape") or [spec["features"]])
    levels = spec.get("levels")
    if data.startswith("images:"):
        source = load_image_source(data)
        values, files = source.images, source.files
    elif data.lower().endswith(".npy") and levels is not None:
        values = read_image_array(data)
    elif looks_like_path(data) and not is_image_spec(data):
        values, names = read_table(data)
        values = align_columns(values, names, data_columns, data)
    else:
        dataset = load_dataset(data)
        values = align_columns(dataset.test.numpy(), dataset.columns, data_columns, data)
    if tuple(values.shape[1:]) != shape:
        if len(shape) == 1 and values.ndim == 2:
            raise ClayflowError(
                f"{data} has {values.shape[1]} columns but the model was trained on {shape[0]}"
            )
        raise ClayflowError(
            f"{data} holds examples of shape {tuple(values.shape[1:])} but the model was trained on {shape}"
        )
    if levels is not None and (
        values.min() < 0 or values.max() >= levels or not np.all(np.mod(values, 1) == 0)
    ):
        raise ClayflowError(
            f"{data} must hold integer levels in [0, {levels - 1}], as the training images did"
        )
    return torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32), files


def read_image_array(path: str) -> np.ndarray:
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ClayflowError(f"cannot read {path} as a numeric .npy array: {exc}") from None
    if not np.issubdtype(values.dtype, np.number) or values.ndim != 4:
        raise ClayflowError(
            f"{path} must hold a numeric (N, C, H, W) array, got {values.dtype} {values.shape}"
        )
    return values
