"""Image datasets as ``uint8`` arrays ``(N, C, H, W)`` of intensity levels, with no download.

* ``digits``: scikit-learn's 8x8 digits (1797 images, 17 levels 0..16);
* ``patches[:SIZE][:rgb]``: non-overlapping SIZE x SIZE patches (default 8, grey) cut from
  scikit-learn's two bundled photographs;
* ``mnist:DIR``: the standard IDX files (plain or ``.gz``) in DIR;
* ``cifar10:DIR``: the ``cifar-10-batches-py`` pickles, read by an unpickler that only
  rebuilds numpy arrays and refuses anything else (it never runs pickled code);
* ``images:DIR``: the user's PNG/JPEG files of one size (grey or RGB).
"""

from __future__ import annotations

import gzip
import pickle
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clayflow.errors import ClayflowError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_PATCH = 8
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's convert("L")


@dataclass
class ImageSource:
    """Images of one source: either one array to split, or fixed train and test parts."""

    name: str
    levels: int
    images: np.ndarray | None = None  # (N, C, H, W) uint8, split 80/10/10 by the caller
    train: np.ndarray | None = None  # with a published test split (MNIST, CIFAR-10)
    test: np.ndarray | None = None
    files: list[str] | None = None  # a folder's: the file name of each of ``images``
    # Class labels (``labelled`` sources): 0-based indices into ``classes``, one per image.
    labels: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    classes: list[str] | None = None


IMAGE_PREFIXES = ("mnist:", "cifar10:", "images:")


def is_image_spec(spec: str) -> bool:
    """Whether ``spec`` names an image dataset (``digits``, ``patches...``, ``mnist:DIR``, ...)."""
    return spec == "digits" or spec == "patches" or spec.startswith(("patches:", *IMAGE_PREFIXES))


def load_image_source(spec: str, labelled: bool = False) -> ImageSource:
    """The images ``spec`` names (see the module docstring); with ``labelled``, their classes
    too: digits' and MNIST's digit, CIFAR-10's class, or for ``images:DIR`` the subfolder
    (one per class) each image is in."""
    if spec == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = bunch.images.astype(np.uint8)[:, None]
        if labelled:
            return ImageSource("digits", 17, images=images, labels=bunch.target, classes=[str(d) for d in range(10)])
        return ImageSource("digits", 17, images=images)
    if spec == "patches" or spec.startswith("patches:"):
        if labelled:
            raise UsageError(f"{spec} has no classes; --conditional needs labelled images: digits, "
                             "mnist:DIR, cifar10:DIR, or images:DIR with one subfolder per class")  # fmt: skip
        return _patches(spec)
    kind, _, path = spec.partition(":")
    if not path:
        raise UsageError(f"{kind}: needs a folder, e.g. {kind}:path/to/folder")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ClayflowError(f"{spec}: {folder} is not a folder")
    if kind == "mnist":
        return read_mnist(folder, labelled)
    if kind == "cifar10":
        return read_cifar10(folder, labelled)
    if labelled:
        return read_class_folders(folder, spec)
    images, files = read_image_folder(folder)
    return ImageSource(spec, 256, images=images, files=files)


def _patches(spec: str) -> ImageSource:
    size, rgb = DEFAULT_PATCH, False
    for part in spec.split(":")[1:]:
        if part in ("rgb", "grey", "gray"):
            rgb = part == "rgb"
        elif part.isdigit() and int(part) >= 2:
            size = int(part)
        else:
            raise UsageError(f"{spec}: expected patches[:SIZE][:rgb|grey] with SIZE >= 2, got {part!r}")
    from sklearn.datasets import load_sample_images

    patches = []
    for photo in load_sample_images().images:  # (427, 640, 3) uint8 each
        pixels = photo.astype(np.float64) if rgb else np.rint(photo @ LUMA)[..., None]
        rows, cols = photo.shape[0] // size, photo.shape[1] // size
        if rows == 0 or cols == 0:
            raise UsageError(f"{spec}: patch size {size} is larger than the photographs {photo.shape[:2]}")
        grid = pixels[: rows * size, : cols * size].reshape(rows, size, cols, size, -1)
        patches.append(grid.transpose(0, 2, 4, 1, 3).reshape(rows * cols, -1, size, size))
    images = np.concatenate(patches).astype(np.uint8)
    return ImageSource(f"patches:{size}:{'rgb' if rgb else 'grey'}", 256, images=images)


# -- MNIST ------------------------------------------------------------------------------------

MNIST_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
MNIST_LABELS = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}


def read_mnist(folder: Path, labelled: bool = False) -> ImageSource:
    """MNIST from ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte`` (or ``.gz``,
    or ``train-images.idx3-ubyte`` spellings) in ``folder`` or its ``raw``/``MNIST/raw``;
    with ``labelled``, the digits from ``train-labels-idx1-ubyte`` and ``t10k-labels-idx1-ubyte``."""
    parts = {split: read_idx(_find_mnist_file(folder, name)) for split, name in MNIST_FILES.items()}
    source = ImageSource(f"mnist:{folder}", 256, train=parts["train"][:, None], test=parts["test"][:, None])
    if labelled:
        for split, name in MNIST_LABELS.items():
            path = _find_mnist_file(folder, name)
            labels = read_idx(path, ndim=1)
            if len(labels) != len(parts[split]) or labels.max(initial=0) > 9:
                raise ClayflowError(f"{path} holds {len(labels)} labels (largest {labels.max(initial=0)}) for "
                                    f"{len(parts[split])} images of digits 0-9")  # fmt: skip
            setattr(source, f"{split}_labels", labels)
        source.classes = [str(d) for d in range(10)]
    return source


def _find_mnist_file(folder: Path, name: str) -> Path:
    stem, _, kind = name.rpartition("-idx")
    spellings = [name, f"{stem}.idx{kind}"]
    for directory in (folder, folder / "raw", folder / "MNIST" / "raw"):
        for spelling in spellings:
            for candidate in (directory / spelling, directory / f"{spelling}.gz"):
                if candidate.is_file():
                    return candidate
    raise ClayflowError(f"MNIST file {name} (or {name}.gz) is missing from {folder}")


def read_idx(path: Path, ndim: int = 3) -> np.ndarray:
    """An IDX file of unsigned bytes (``.gz`` or plain) as a uint8 array of ``ndim``
    dimensions (images 3, labels 1), validated."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as file:
                raw = file.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise ClayflowError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ClayflowError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ClayflowError(f"{path} holds IDX type {raw[2]:#x}; only unsigned bytes (0x08) are supported")
    dims = raw[3]
    header = 4 + 4 * dims
    if len(raw) < header:
        raise ClayflowError(f"{path} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ClayflowError(
            f"{path} is truncated or malformed: its header promises {expected} bytes for shape {shape}, "
            f"the file has {len(raw)}"
        )
    if dims != ndim:
        what = "an images file has 3 (N, H, W)" if ndim == 3 else "a labels file has 1 (N,)"
        raise ClayflowError(f"{path} holds {dims}-D data; {what}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


# -- CIFAR-10 ---------------------------------------------------------------------------------

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, numpy scalars and plain containers only; any other global is
    refused. (``_codecs.encode`` is how Python 3 writes bytes at pickle protocol 2.)"""

    ALLOWED: typing.ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def read_cifar_batch(path: Path, labelled: bool = False):
    """The images of one CIFAR-10 python batch as ``(N, 3, 32, 32)`` uint8; with
    ``labelled``, ``(images, labels (N,))``."""
    try:
        with open(path, "rb") as file:
            batch = _ArrayUnpickler(file, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise ClayflowError(f"{path} is not a CIFAR-10 batch: {exc}") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ClayflowError(f"{path} is truncated or not a CIFAR-10 batch ({type(exc).__name__})") from None
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ClayflowError(f"{path} has no 'data' array of uint8 rows of 3072 values (3x32x32)")
    images = data.reshape(-1, 3, 32, 32)
    if not labelled:
        return images
    labels = np.asarray(batch.get(b"labels", batch.get("labels", [])))
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or not np.all((labels >= 0) & (labels < 10)):
        raise ClayflowError(f"{path} has no 'labels' list of one class 0-9 per image")
    return images, labels


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_cifar10(folder: Path, labelled: bool = False) -> ImageSource:
    """CIFAR-10 from ``data_batch_1..5`` and ``test_batch`` in ``folder`` (or its
    ``cifar-10-batches-py`` subfolder), with their classes if ``labelled``."""
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    missing = [n for n in [*CIFAR_TRAIN, CIFAR_TEST] if not (folder / n).is_file()]
    if missing:
        raise ClayflowError(f"CIFAR-10 file(s) {', '.join(missing)} missing from {folder}")
    if labelled:
        batches = [read_cifar_batch(folder / name, labelled=True) for name in CIFAR_TRAIN]
        test, test_labels = read_cifar_batch(folder / CIFAR_TEST, labelled=True)
        return ImageSource(f"cifar10:{folder}", 256, train=np.concatenate([b[0] for b in batches]), test=test,
                           train_labels=np.concatenate([b[1] for b in batches]), test_labels=test_labels,
                           classes=CIFAR_CLASSES)  # fmt: skip
    train = np.concatenate([read_cifar_batch(folder / name) for name in CIFAR_TRAIN])
    return ImageSource(f"cifar10:{folder}", 256, train=train, test=read_cifar_batch(folder / CIFAR_TEST))


# -- a folder of the user's images ------------------------------------------------------------


def read_image_folder(folder: Path) -> tuple[np.ndarray, list[str]]:
    """Every PNG/JPEG in ``folder`` (sorted by name) as ``(N, C, H, W)`` uint8, and their file
    names: C = 1 if all are greyscale, else 3 (RGB; alpha is dropped). All must have the same
    size."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if _is_image_file(p))
    if not files:
        raise ClayflowError(f"{folder} has no {'/'.join(IMAGE_SUFFIXES)} images")
    pictures = []
    for path in files:
        try:
            with Image.open(path) as picture:
                picture.load()
                pictures.append((path, picture.copy()))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ClayflowError(f"cannot read image {path}: {exc}") from None
    first_path, first = pictures[0]
    grey = all(p.mode in ("1", "L", "LA") for _, p in pictures)
    arrays = []
    for path, picture in pictures:
        if picture.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            raise ClayflowError(f"{path} is a 16-bit or float image; save the images as 8-bit")
        if picture.size != first.size:
            raise ClayflowError(
                f"images must all have one size: {first_path.name} is {first.size[0]}x{first.size[1]}, "
                f"{path.name} is {picture.size[0]}x{picture.size[1]}"
            )
        array = np.asarray(picture.convert("L" if grey else "RGB"), dtype=np.uint8)
        arrays.append(array[None] if grey else array.transpose(2, 0, 1))
    return np.stack(arrays), [path.name for path in files]


def read_class_folders(folder: Path, spec: str) -> ImageSource:
    """The images of each subfolder of ``folder`` (sorted by name), labelled by subfolder:
    one class per subfolder, as torchvision's ``ImageFolder``. Greyscale classes become RGB
    when another class is in colour; all images must have one size."""
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(subfolders) < 2:
        raise ClayflowError(f"{spec}: --conditional needs one subfolder of images per class in {folder}, "
                            f"found {len(subfolders)}")  # fmt: skip
    loose = [p.name for p in folder.iterdir() if _is_image_file(p)]
    if loose:
        raise ClayflowError(f"{spec}: {len(loose)} image(s) ({loose[0]}, ...) lie beside the class subfolders; "
                            "--conditional takes the images inside each class's subfolder, so move them into one")  # fmt: skip
    parts = [read_image_folder(sub) for sub in subfolders]
    channels = max(images.shape[1] for images, _ in parts)
    arrays, files = [], []
    for sub, (images, names) in zip(subfolders, parts):
        if images.shape[2:] != parts[0][0].shape[2:]:
            raise ClayflowError(f"images must all have one size: {subfolders[0].name}/ holds "
                                f"{parts[0][0].shape[3]}x{parts[0][0].shape[2]}, {sub.name}/ {images.shape[3]}x{images.shape[2]}")  # fmt: skip
        arrays.append(np.repeat(images, channels // images.shape[1], axis=1))
        files += [f"{sub.name}/{name}" for name in names]
    labels = np.concatenate([np.full(len(images), k) for k, (images, _) in enumerate(parts)])
    return ImageSource(spec, 256, images=np.concatenate(arrays), files=files, labels=labels,
                       classes=[sub.name for sub in subfolders])  # fmt: skip


def _is_image_file(path: Path) -> bool:
    """A PNG/JPEG file that is not hidden (macOS's ``._name.png`` companions are not images)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
