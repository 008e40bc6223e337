"""Datasets, per-dataset normalisation and per-batch resampling (Section 4 of the paper).

Images are kept as ``uint8`` tensors ``(N, C, H, W)``; a batch is converted to float, resampled
to the requested size and normalised only when it is used, so memory stays flat whatever the
size (a 224 x 224 copy of Fashion-MNIST would need 12 GB in float32).

Resampling (the paper's up-sampling of CIFAR-10 and down-sampling of mini-ImageNet):

- up by an integer factor ``size / native`` (x1, x2, x4, x8): each pixel copied into a block of
  ``factor x factor`` pixels (nearest neighbour), so the up-sampled image carries exactly the
  information of the original while ``d`` grows by ``factor**2``;
- ``pad=True`` first pads 28 x 28 images with zeros (black) to 32 x 32, so that the sizes are
  32, 64, 128, 256 as for CIFAR-10;
- down to a smaller size: bilinear interpolation with antialiasing.

    >>> ds = synthetic(n_train=8, n_test=4, seed=0)
    >>> batch = ds.batch(ds.x_train[:2], size=28)
    >>> tuple(batch.shape), batch.dtype
    ((2, 1, 28, 28), torch.float32)
"""

from __future__ import annotations

import gzip
import importlib
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from advdim.choice import Choice
from advdim.errors import AdvdimError, DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "ADVDIM_FASHION_MNIST"
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


class DatasetName(Choice):
    """The datasets :func:`load` knows."""

    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"
    SYNTHETIC = "synthetic"

    @classmethod
    def noun(cls) -> str:
        return "dataset"

    @classmethod
    def aliases(cls) -> dict[str, str]:
        return {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}


# Per-channel mean and standard deviation of the pixel values in [0, 1] (training sets).
NORMALISATION: dict[DatasetName, tuple[tuple[float, ...], tuple[float, ...]]] = {
    DatasetName.FASHION_MNIST: ((0.2860,), (0.3530,)),
    DatasetName.CIFAR10: ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),  # the reference's values
    DatasetName.SYNTHETIC: ((0.5,), (0.25,)),
}


@dataclass(frozen=True)
class Dataset:
    """A labelled image dataset held as ``uint8`` ``(N, C, H, W)`` tensors.

    Attributes:
        name: which dataset.
        x_train, y_train, x_test, y_test: images (uint8) and int64 labels.
        mean, std: per-channel normalisation of pixel values in ``[0, 1]``.
        n_classes: number of classes ``K``.
    """

    name: DatasetName
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_classes: int = 10

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise DataError(f"{self.name.value}: {split} images must be uint8 (N, C, H, W)")
            if y.shape != (x.shape[0],):
                raise DataError(f"{self.name.value}: {split} labels do not match the images")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"{self.name.value}: normalisation needs one mean and std per channel")

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def native(self) -> int:
        """Native side length of the images."""
        return int(self.x_train.shape[2])

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> Dataset:
        """The first ``n_train`` / ``n_test`` examples (``None``: all)."""
        for n, name in ((n_train, "n_train"), (n_test, "n_test")):
            if n is not None and n < 1:
                raise AdvdimError(f"{name} must be positive, got {n}")
        return Dataset(self.name, self.x_train[:n_train], self.y_train[:n_train], self.x_test[:n_test],
                       self.y_test[:n_test], self.mean, self.std, self.n_classes)

    def bounds(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The box of valid normalised inputs: per channel ``(0 - mean)/std`` and ``(1 - mean)/std``,
        each of shape ``(C, 1, 1)``."""
        mean = torch.tensor(self.mean, dtype=dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype).view(-1, 1, 1)
        return (0 - mean) / std, (1 - mean) / std

    def batch(self, images: torch.Tensor, size: int | None = None, pad: bool = False,
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
        """Float, resampled and normalised batch of ``images`` (``uint8 (B, C, H, W)``)."""
        x = images.to(device=device, dtype=dtype) / 255.0
        x = resample(x, size, pad=pad)
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def resample(x: torch.Tensor, size: int | None, pad: bool = False) -> torch.Tensor:
    """Resample a float batch ``(B, C, s, s)`` to ``(B, C, size, size)``.

    With ``pad`` the images are first zero-padded (centred) to the next multiple of 32:
    28 -> 32 (2 pixels each side), as for CIFAR-10 sizes.  Then ``size`` must be the (padded) native size times 1, 2, 4
    or 8 (pixel-copy up-sampling) or smaller than it (bilinear, antialiased down-sampling).

    >>> x = torch.arange(4.0).view(1, 1, 2, 2)
    >>> resample(x, 4)[0, 0].tolist()
    [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0]]
    """
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise AdvdimError(f"expected square images (B, C, s, s), got shape {tuple(x.shape)}")
    if pad:
        side = x.shape[2]
        target = 32 * max(1, -(-side // 32))
        total = target - side
        if total:
            x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    native = x.shape[2]
    if size is None or size == native:
        return x
    if size < 1:
        raise AdvdimError(f"image size must be positive, got {size}")
    if size < native:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    factor, rest = divmod(size, native)
    if rest or factor not in (2, 4, 8):
        raise AdvdimError(
            f"size {size} is not the native size {native} times 1, 2, 4 or 8 (nor smaller than it)"
        )
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def _read_idx(path: Path) -> np.ndarray:
    """Read one (gzipped) idx file: magic ``0 0 dtype ndim``, big-endian int32 dims, then data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {tuple(dims)} but holds {data.size} bytes")
    return data.reshape(tuple(int(d) for d in dims))


def fashion_mnist(folder: str | os.PathLike[str] | None = None) -> Dataset:
    """Fashion-MNIST (60k train / 10k test, 1 x 28 x 28) from the Debian package's idx files.

    The folder is ``folder``, else ``$ADVDIM_FASHION_MNIST``, else
    ``/usr/share/datasets/fashion-mnist``.
    """
    root = Path(folder or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    missing = [name for name in FASHION_MNIST_FILES.values() if not (root / name).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {str(root)!r} (missing {', '.join(missing)}): "
            f"run `apt-get install dataset-fashion-mnist`, or point ${FASHION_MNIST_ENV} at a folder "
            "holding the four idx .gz files"
        )
    arrays = {k: _read_idx(root / name) for k, name in FASHION_MNIST_FILES.items()}
    mean, std = NORMALISATION[DatasetName.FASHION_MNIST]
    return Dataset(
        DatasetName.FASHION_MNIST,
        torch.from_numpy(arrays["x_train"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["y_train"].astype(np.int64)),
        torch.from_numpy(arrays["x_test"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["y_test"].astype(np.int64)),
        mean, std,
    )


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol 2, for the latin-1 codec only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not how bytes are pickled")
    return text.encode("latin1")


def _numpy(name: str, *modules: str) -> Callable[[], object]:
    """A getter of ``name`` from the first of ``modules`` that has it (numpy 2's ``numpy._core``
    first: numpy 1's ``numpy.core`` warns of its deprecation in numpy 2)."""

    def get() -> object:
        for module in modules:
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
        raise _Refused(f"this numpy has no {name} to rebuild an array with")

    return get


#: the only objects a CIFAR-10 python batch refers to: an ndarray's reconstruction (numpy 1 and 2
#: module names; protocol 5's buffer form), and Python 3's latin-1 form of bytes at protocol 2
_CIFAR_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    **dict.fromkeys([("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")],
                    _numpy("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")),
    **dict.fromkeys([("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")],
                    _numpy("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings, bytes, numbers and numpy arrays only: any
    other object a pickle names (``os.system``, ``subprocess.Popen``, ...) is refused, never loaded."""

    def find_class(self, module: str, name: str) -> Any:
        make = _CIFAR_GLOBALS.get((module, name))
        if make is None:
            raise _Refused(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds (refused, not run)")
        return make()

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it holds a persistent reference, which a CIFAR-10 batch never holds")


class _Refused(pickle.UnpicklingError):
    """The pickle names an object outside :data:`_CIFAR_GLOBALS`."""


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` of one batch of the python format (a
    pickled dict with ``data``, an ``(N, 3072)`` uint8 array, and ``labels``, N ints in 0..9),
    read with :class:`_CifarUnpickler`: a crafted batch cannot run code."""
    try:
        raw = path.read_bytes()  # a batch is 30 MB; a length field in it cannot ask for more
    except OSError as e:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {e.strerror or e}") from None
    try:
        d = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {e}") from None
    except Exception as e:  # noqa: BLE001 - any fault of a malformed pickle is one line naming the file
        what = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise DataError(f"{path} is not a CIFAR-10 python batch: the pickle does not load ({what})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch: it holds a {type(d).__name__}, not a dict")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path} is not a CIFAR-10 python batch (no data / labels)")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: expected (N, 3072) uint8 data, got a {got}")
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        y = labels.astype(np.int64)
    elif isinstance(labels, (list, tuple)) and all(type(v) is int and 0 <= v <= 9 for v in labels):
        y = np.asarray(labels, dtype=np.int64) if labels else np.zeros(0, dtype=np.int64)
    else:
        y = None
    if y is None or len(y) != data.shape[0] or (len(y) and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{path}: expected a list of {data.shape[0]} labels in 0..9 (one per image)")
    return data.reshape(-1, 3, 32, 32), y


def cifar10(folder: str | os.PathLike[str]) -> Dataset:
    """CIFAR-10 in the official python format (``data_batch_1..5`` and ``test_batch`` pickles)."""
    root = Path(folder)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train_files = sorted(root.glob("data_batch_*"))
    if not train_files or not (root / "test_batch").is_file():
        raise DataError(
            f"CIFAR-10 not found in {str(root)!r}: download cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and pass the folder with --data-dir"
        )
    parts = [_read_cifar_batch(p) for p in train_files]
    x_test, y_test = _read_cifar_batch(root / "test_batch")
    mean, std = NORMALISATION[DatasetName.CIFAR10]
    return Dataset(
        DatasetName.CIFAR10,
        torch.from_numpy(np.concatenate([p[0] for p in parts])),
        torch.from_numpy(np.concatenate([p[1] for p in parts])),
        torch.from_numpy(x_test.copy()),
        torch.from_numpy(y_test),
        mean, std,
    )


def synthetic(n_train: int = 512, n_test: int = 256, side: int = 14, n_classes: int = 10,
              noise: float = 0.15, seed: int = 0) -> Dataset:
    """A learnable toy set: each class is a random smooth prototype in [0, 1] plus pixel noise.

    Used by the tests (no files needed); 1 x ``side`` x ``side`` uint8 images.
    """
    if min(n_train, n_test, side, n_classes) < 1 or noise < 0:
        raise AdvdimError("synthetic data needs positive sizes and a non-negative noise level")
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, size=(n_classes, 1, max(1, side // 2), max(1, side // 2)))
    protos = F.interpolate(torch.from_numpy(coarse), size=(side, side), mode="bilinear",
                           align_corners=False).numpy()

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.integers(0, n_classes, size=n)
        x = np.clip(protos[y] + noise * rng.standard_normal((n, 1, side, side)), 0, 1)
        return torch.from_numpy(np.round(x * 255).astype(np.uint8)), torch.from_numpy(y.astype(np.int64))

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    mean, std = NORMALISATION[DatasetName.SYNTHETIC]
    return Dataset(DatasetName.SYNTHETIC, x_train, y_train, x_test, y_test, mean, std, n_classes)


def load(name: str | DatasetName, data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Dataset:
    """Load a dataset by name (``fashion-mnist``, ``cifar10`` (needs ``data_dir``), ``synthetic``)."""
    which = DatasetName.parse(name)
    if which is DatasetName.FASHION_MNIST:
        return fashion_mnist(data_dir)
    if which is DatasetName.CIFAR10:
        if data_dir is None:
            raise DataError("CIFAR-10 needs the folder of its python batches (--data-dir)")
        return cifar10(data_dir)
    return synthetic(seed=seed)
