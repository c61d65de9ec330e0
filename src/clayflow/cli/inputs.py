"""What ``clayflow score`` reads: the examples of a file, an image folder or a dataset,
checked against the trained model's data shape and levels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clayflow.errors import ClayflowError


def examples_to_score(
    data: str, payload: dict, label_column: str | None = None
) -> tuple[torch.Tensor, list[str] | None, np.ndarray | None]:
    """The examples of ``data`` as a tensor, checked against the data shape of the model of
    the checkpoint ``payload``: every image of ``images:DIR`` (and their file names), the
    rows of a table file, or a dataset's test split.

    Table columns are matched to the training columns (``payload["data_columns"]``, see
    ``Dataset.layout``) by name when both have names, else by position (the training file's
    order: a conditional run's columns are put in its order by ``column_order``);
    ``label_column`` (a name, or a number from 1) is taken out as the labels. A
    class-conditional run's ``images:DIR`` subfolders are matched to its ``classes`` by name. Shape: ``(N, *event_shape)``
    float32 (a conditional run's rows with their context); names: None but for a folder of
    images; labels ``(N,)`` or None.
    """
    files = labels = names = None
    spec = payload["model_spec"]
    from clayflow.data import load_dataset, looks_like_path, with_class_channel
    from clayflow.data.images import is_image_spec, load_image_source
    from clayflow.data.tabular import read_table

    shape = tuple(spec.get("event_shape") or [spec["features"]])
    levels = spec.get("levels")
    classes = False
    if context_features := (spec.get("options") or {}).get("context_features"):
        if len(shape) == 1:  # a conditional model scores rows (x, context)
            shape = (shape[0] + context_features,)
        else:  # images with their class as one more channel (see ``clayflow.data.Dataset``)
            shape, classes = (shape[0] + 1, *shape[1:]), True
            if looks_like_path(data) and not is_image_spec(data):
                raise ClayflowError(f"this run learned images given their class; give labelled images "
                                    f"(a dataset, or images:DIR with one subfolder per class), not {data}")  # fmt: skip
    if data.startswith("images:"):
        source = load_image_source(data, labelled=classes)
        values, files = source.images, source.files
        if classes:
            values = with_class_channel(values, _class_indices(source, payload.get("classes"), data))
    elif classes:
        values = load_dataset(data, classes=True).test.numpy()
    elif data.lower().endswith(".npy") and levels is not None:
        values = read_image_array(data)
    elif looks_like_path(data) and not is_image_spec(data):
        values, names = read_table(data)
        if label_column is not None:
            if names is not None and label_column in (payload.get("data_columns") or ()):
                raise ClayflowError(f"--label-column {label_column} is a column the model reads (as data or context); "
                                    "the labels need a column of their own")  # fmt: skip
            values, names, labels = _take_column(values, names, label_column, data)
        try:
            values = _in_model_order(values, names, payload, data)
        except ClayflowError as exc:
            extra = [c for c in names or [] if c not in (payload.get("data_columns") or names)]
            if label_column is None and len(extra) == 1:  # a file that still holds its labels, most likely
                raise ClayflowError(f"{exc}; if {extra[0]!r} holds labels, name it with --label-column") from None
            raise
    else:
        dataset = load_dataset(data)
        values = _in_model_order(dataset.test.numpy(), dataset.columns, payload, data)
    if len(values) == 0:
        raise ClayflowError(f"{data} holds no examples")
    if tuple(values.shape[1:]) != shape:
        if len(shape) == 1 and values.ndim == 2:
            weights = " (log_weight holds sample --weights' importance weights: leave it out)" if names and "log_weight" in names else ""
            raise ClayflowError(f"{data} has {values.shape[1]} columns but the model was trained on {shape[0]}{weights}")
        raise ClayflowError(
            f"{data} holds examples of shape {tuple(values.shape[1:])} but the model was trained on {shape}"
        )
    if levels is not None and (
        values.min() < 0 or values.max() >= levels or not np.all(np.mod(values, 1) == 0)
    ):
        raise ClayflowError(
            f"{data} must hold integer levels in [0, {levels - 1}], as the training images did"
        )
    if label_column is not None and labels is None:
        raise ClayflowError(f"--label-column needs a table file; {data} is not one")
    return torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32), files, labels


def _in_model_order(values: np.ndarray, names: list[str] | None, layout: dict, path: str) -> np.ndarray:
    """A table's columns (named ``names``, or None) in the model's order (``layout``: a
    checkpoint's ``Dataset.layout``): by name when the file and the run both have names, else
    by position in the training file's order (``column_order``: where a conditional run's
    column i came from in that file)."""
    from clayflow.data.tabular import align_columns

    data_columns, column_order = layout.get("data_columns"), layout.get("column_order")
    if names is not None and data_columns is not None:
        return align_columns(values, names, data_columns, path)
    if column_order is not None and values.shape[1] == len(column_order):
        return values[:, column_order]
    return values


def _class_indices(source, classes: list[str] | None, spec: str) -> np.ndarray:
    """The class index, in the run's ``classes``, of each image of a folder of class
    subfolders, matched by name (a run that did not record its classes: by sorted position)."""
    if classes is None:
        return source.labels
    unknown = [name for name in source.classes if name not in classes]
    if unknown:
        raise ClayflowError(f"{spec} has subfolder(s) {', '.join(unknown)}, which are not classes the run "
                            f"learned ({', '.join(classes)})")  # fmt: skip
    return np.array([classes.index(source.classes[k]) for k in source.labels])


def _take_column(values: np.ndarray, names: list[str] | None, column: str, path: str):
    """``values`` without ``column`` (a name, or a number from 1), its names, and the column."""
    if names is not None and column in names:
        index = names.index(column)
    elif column.isdigit() and 1 <= int(column) <= values.shape[1]:
        index = int(column) - 1
    else:
        raise ClayflowError(f"{path} has no column {column!r} (give a name from its header or a number from 1)")
    kept = [i for i in range(values.shape[1]) if i != index]
    return values[:, kept], [names[i] for i in kept] if names is not None else None, values[:, index]


def read_labels(path: str, rows: int) -> np.ndarray:
    """One label per scored row from a .csv/.npy file (its first column; a header is allowed)."""
    from clayflow.data.tabular import read_table

    if not Path(path).exists():
        raise ClayflowError(f"labels file {path} (--labels) does not exist")
    values, _ = read_table(path)
    if values.shape[1] != 1:
        raise ClayflowError(f"{path} has {values.shape[1]} columns; give the labels as one column")
    if len(values) != rows:
        raise ClayflowError(f"{path} holds {len(values)} labels for {rows} scored rows")
    return values[:, 0]


def run_dataset(run: str, payload: dict, why: str = "give --data"):
    """The dataset a run was trained on (``clayflow.data.Dataset``: its splits), named by the
    run's ``config.json`` (or the checkpoint's config). A run of ``clayflow.fit`` (data from
    Python) or one that does not say is a one-line error ending with ``why``.

    The data must be the run's own: their fingerprint (rows per split, shape, SHA-256; see
    ``data_fingerprint``) must equal the one the run's checkpoints recorded, else they are
    refused, never used (another validation split would give a wrong threshold). A relative
    file or image-folder name (``t.csv``, ``images:shots``) is the one ``clayflow train`` was
    given, so it names the data only from the folder training ran in: it is looked for from here, then from the run directory's parents
    (where ``--out`` is usually given from), and the first file that matches is used."""
    from clayflow.data import load_dataset
    from clayflow.train.resume import (
        data_fingerprint,
        fingerprint_difference,
        read_run_config,
        read_run_options,
    )
    from clayflow.train.start import FIT_DATA

    config = payload.get("config") or {}
    run_dir = _run_directory(run)
    has_config = run_dir is not None and (run_dir / "config.json").exists()
    if has_config:
        config = read_run_options(run_dir)
    if config.get("kind") == "variational":
        raise ClayflowError(f"{run} was fitted to the target {config.get('target')}, not trained on data; {why}")
    if config.get("data") == FIT_DATA:
        raise ClayflowError(f"{run} was trained from Python (clayflow.fit), so its data are not known here; {why}")
    if has_config:
        read_run_config(run_dir, config)  # a malformed config.json is named as such
    if "data" not in config:
        raise ClayflowError(f"{run} does not say what data it was trained on; {why}")
    spec = config["data"]
    saved = payload.get("data_fingerprint") or _trained_fingerprint(run_dir)
    location = _relative_location(spec)
    places = _data_places(location, run_dir) if location else [spec]
    if location and not places:
        what = "folder" if location[0] else "file"
        raise ClayflowError(f"{run} was trained on the {what} {spec!r}, which is neither here ({Path.cwd()}) nor "
                            "beside the run; run this command from the folder it was trained in")  # fmt: skip
    refused = []  # why each place was not the run's data
    for place in places:
        try:
            data = load_dataset(place, config.get("context"), classes=bool(config.get("conditional")))
        except ClayflowError as exc:
            if not location:
                raise
            refused.append(f"{place}: {exc}")
            continue
        if saved is None or (now := data_fingerprint(data)) == saved:
            return data
        refused.append(f"{place}: {fingerprint_difference(saved, now)}")
    hint = ("run this command from the folder it was trained in, with its data unchanged" if location
            else f"{spec!r} has changed since the run was trained")  # fmt: skip
    raise ClayflowError(f"{run} was trained on other data than {spec!r} gives now ({'; '.join(refused)}), so its "
                        f"splits are not the run's: {hint}")  # fmt: skip


def _relative_location(spec: str) -> tuple[str, str] | None:
    """How the data ``spec`` names a file or folder relative to the folder training ran in:
    ``(prefix, path)``, e.g. ``("", "t.csv")`` for a table file, ``("images:", "shots")``
    for an image folder (likewise ``mnist:`` and ``cifar10:``); None for built-in data and
    absolute paths."""
    from clayflow.data import looks_like_path
    from clayflow.data.images import IMAGE_PREFIXES, is_image_spec

    prefix = next((p for p in IMAGE_PREFIXES if spec.startswith(p)), "")
    path = spec[len(prefix) :]
    if not prefix and (is_image_spec(spec) or not looks_like_path(spec)):
        return None
    return None if not path or Path(path).is_absolute() else (prefix, path)


def _run_directory(run: str) -> Path | None:
    """The run directory of ``run``: itself, or the one holding the checkpoint file
    ``RUN/checkpoints/NAME.pt``; None for a checkpoint file elsewhere."""
    from clayflow.train.checkpoint import CHECKPOINT_NAME

    path = Path(run)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == Path(CHECKPOINT_NAME).parent.name else None


def _data_places(location: tuple[str, str], run_dir: Path | None) -> list[str]:
    """Where a run's data named relative to the folder training ran in (``location``, see
    ``_relative_location``) may be: each existing file or folder of that name from here and
    from the run directory's three parents, once each, as data specs."""
    prefix, name = location
    parents = run_dir.resolve().parents[:3] if run_dir is not None else ()
    places: dict[Path, str] = {}
    for path in (Path(name), *(folder / name for folder in parents)):
        if path.is_file() or (prefix and path.is_dir()):
            places.setdefault(path.resolve(), prefix + str(path))
    return list(places.values())


def _trained_fingerprint(run_dir: Path | None) -> dict | None:
    """The data fingerprint the run's last checkpoint recorded, for a payload without one
    (``best.pt`` of runs before 2026-12-03); None without a run directory, or for a run of a
    clayflow that did not record one."""
    from clayflow.train.checkpoint import CHECKPOINT_NAME, read_checkpoint

    last = run_dir / CHECKPOINT_NAME if run_dir is not None else None
    try:
        return read_checkpoint(last).get("data_fingerprint") if last is not None and last.is_file() else None
    except ClayflowError:
        return None


def read_image_array(path: str) -> np.ndarray:
    """The ``(N, C, H, W)`` numeric array of a ``.npy`` file of images (one line if it is not one)."""
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ClayflowError(f"cannot read {path} as a numeric .npy array: {exc}") from None
    if not np.issubdtype(values.dtype, np.number) or values.ndim != 4:
        raise ClayflowError(
            f"{path} must hold a numeric (N, C, H, W) array, got {values.dtype} {values.shape}"
        )
    return values


def outside_training_range(values: torch.Tensor, columns: list[int], payload: dict) -> list[tuple[str, int, float, float]]:
    """For each of the model's ``columns``, whose values are the matching column of ``values``
    ``(N, len(columns))``: its name, how many values lie outside the range of the training
    rows (the checkpoint's ``column_ranges``, compared in float32, as the rows were held) and
    that range; columns with none are left out. Runs of before 2026-12-04 did not record the
    ranges: nothing is found."""
    ranges, names = payload.get("column_ranges"), payload.get("data_columns")
    found = []
    for i, j in enumerate(columns if ranges else []):
        low, high = ranges[j]
        column = values[:, i].float()
        if count := int(((column < low) | (column > high)).sum()):
            found.append((names[j] if names else f"x{j + 1}", count, low, high))
    return found


def warn_contexts_outside_training(rows: torch.Tensor, payload: dict, k: int) -> None:
    """A warning when the contexts of a conditional table's rows (the last ``k`` columns of
    ``rows`` ``(M, D + k)`` or ``(M, k)``) leave the range that the training rows' contexts
    span, column by column: p(x | c) there is the model's extrapolation, learned from no row."""
    import sys

    width = len(payload.get("column_ranges") or [])  # the model's D + K columns, the context last
    outside = outside_training_range(rows[:, -k:], list(range(width - k, width)), payload) if k else []
    if outside:
        found = "; ".join(f"{name} in {count} of {len(rows)} rows (training rows: {low:g} to {high:g})"
                          for name, count, low, high in outside)  # fmt: skip
        print(f"clayflow: warning: context values lie outside those of the training rows: {found}; "
              "the model's p(x | c) there is an extrapolation", file=sys.stderr)  # fmt: skip
