"""Datasets: CIFAR-10 pickles written here in the official format, idx parsing, resampling, errors."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from advdim.empirical import cifar10, fashion_mnist, load, resample, synthetic

from advdim.errors import AdvdimError, DataError


def _write_cifar(folder, n=5, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, f, protocol=2)
        batches[name] = (data, labels)
    return batches


def test_cifar10_reads_official_python_batches(tmp_path):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = cifar10(tmp_path)
    assert ds.x_train.shape == (25, 3, 32, 32) and ds.x_test.shape == (5, 3, 32, 32)
    data, labels = batches["data_batch_2"]
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32 x 32
    assert torch.equal(ds.x_train[5, 1], torch.from_numpy(data[0, 1024:2048].reshape(32, 32)))
    assert ds.y_train[5].item() == labels[0]
    assert tuple(ds.batch(ds.x_test, size=64).shape) == (5, 3, 64, 64)


def test_fashion_mnist_idx_and_missing(tmp_path, monkeypatch):
    folder = tmp_path / "fm"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 7), ("t10k", 3)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">BBBBiii", 0, 0, 8, 3, n, 28, 28) + imgs.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">BBBBi", 0, 0, 8, 1, n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes())
    monkeypatch.setenv("ADVDIM_FASHION_MNIST", str(folder))
    ds = load("fashion-mnist")
    assert ds.x_train.shape == (7, 1, 28, 28) and ds.y_test.shape == (3,)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match="CIFAR-10"):
        cifar10(tmp_path / "nowhere")


def test_resample_pixel_copy_pad_and_bilinear():
    x = torch.rand(2, 1, 28, 28)
    for f in (1, 2, 4, 8):
        up = resample(x, 28 * f)
        assert torch.equal(up[:, :, ::f, ::f], x)
        assert torch.equal(up[:, :, f - 1::f, f - 1::f], x)
    padded = resample(x, 64, pad=True)
    assert padded.shape == (2, 1, 64, 64)
    assert torch.equal(padded[:, :, 4:60:2, 4:60:2], x) and padded[:, :, :4].abs().sum() == 0
    const = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(resample(const, 16), const[:, :, :16, :16])
    with pytest.raises(AdvdimError):
        resample(x, 42)


def test_normalisation_and_box():
    ds = synthetic(n_train=16, n_test=8)
    lo, hi = ds.bounds()
    b = ds.batch(ds.x_train)
    assert (b >= lo - 1e-6).all() and (b <= hi + 1e-6).all()
    zero = ds.batch(torch.zeros(1, 1, 14, 14, dtype=torch.uint8))
    assert torch.allclose(zero, lo.expand(1, 1, 14, 14))
    with pytest.raises(AdvdimError):
        load("mnist-of-mars")
