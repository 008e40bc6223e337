"""CIFAR-10 batches are read without running code (issue 24, item 3): a restricted unpickler admits
only dicts, lists, strings, bytes, numbers and numpy arrays; a crafted, garbage or wrongly shaped
batch is one line naming the file, and the CLI exits 2 with that line."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from advdim.empirical import cifar10

from advdim.errors import DataError

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_batches(folder: Path, n: int = 3, protocol: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Six batches of the python format, ``n`` images each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in NAMES:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        (folder / name).write_bytes(pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                                  b"filenames": [b"x.png"] * n}, protocol=protocol))
        out[name] = data
    return out


class _Marker:
    """Unpickling this runs ``os.system('touch MARKER')`` (a plain pickle.load would run it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class _Exec:
    """Unpickling this runs ``exec`` of code that writes the marker, through builtins."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_official_format_batches_still_load(tmp_path: Path, protocol: int) -> None:
    batches = write_batches(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = cifar10(tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert np.array_equal(ds.x_test.numpy().reshape(3, 3072), batches["test_batch"])


def test_a_python2_batch_read_with_encoding_bytes_loads(tmp_path: Path) -> None:
    """The official files are Python 2 pickles: str keys arrive as bytes (``encoding='bytes'``) and
    the array's state as a byte string; hand-written opcodes of that form."""
    write_batches(tmp_path)
    data = bytes(range(256)) * 12  # one image, 3072 bytes
    # {'data': ndarray(uint8, (1, 3072)), 'labels': [7]} as Python 2's cPickle writes it (protocol 2)
    dtype_state = b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
             b"(K\x01K\x01M\x00\x0c\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R" + dtype_state
             + b"\x89T" + len(data).to_bytes(4, "little") + data + b"tb")
    blob = b"\x80\x02}(U\x04data" + array + b"U\x06labels]K\x07au."
    (tmp_path / "test_batch").write_bytes(blob)
    ds = cifar10(tmp_path)
    assert ds.y_test.tolist() == [7]
    assert ds.x_test.numpy().reshape(-1).tolist() == list(data)


@pytest.mark.parametrize("payload", [_Marker, _Exec])
def test_a_crafted_batch_runs_nothing_and_is_one_line_naming_the_file(tmp_path: Path, payload: type) -> None:
    write_batches(tmp_path)
    marker = tmp_path / "MARKER"
    bad = tmp_path / "data_batch_3"
    bad.write_bytes(pickle.dumps({b"data": payload(marker), b"labels": [1]}, protocol=2))
    assert not marker.exists()
    with pytest.raises(DataError) as info:
        cifar10(tmp_path)
    assert not marker.exists(), "the pickle ran code"
    message = str(info.value)
    assert str(bad) in message and "is not a CIFAR-10 python batch" in message and "refused" in message
    assert "\n" not in message
    # the same payload through a plain pickle.load would have run: the test's payload is live
    pickle.loads(bad.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(("content", "words"), [
    (pickle.dumps([1, 2, 3]), "it holds a list, not a dict"),
    (b"\x00garbage\xff" * 1000, "the pickle does not load"),
    (b"", "the pickle does not load"),
    (b"\x80\x04\x95" + (2**62).to_bytes(8, "little") + b"B" + (2**62).to_bytes(8, "little")[:4],
     "the pickle does not load"),  # a length that asks for exabytes
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}),
     "expected (N, 3072) uint8 data, got a float32 array of shape (2, 3072)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}), "labels in 0..9"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10**40]}), "labels in 0..9"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "a list of 2 labels"),
    (pickle.dumps({b"labels": [0]}), "no data / labels"),
    (pickle.dumps(np.zeros(3, dtype=object)), "it holds a ndarray, not a dict"),
    (pickle.dumps({b"data": np.zeros((1, 3072), dtype=object), b"labels": [0]}), "got a object array"),
    (pickle.dumps({b"data": b"x", b"labels": [0]}, protocol=2), "got a bytes"),
])
def test_malformed_batches_are_one_line_naming_the_file(tmp_path: Path, content: bytes, words: str) -> None:
    write_batches(tmp_path)
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(DataError) as info:
        cifar10(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "test_batch") in message and words in message, message
    assert "\n" not in message


def test_the_cli_refuses_a_crafted_batch_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from advdim.cli import main

    write_batches(tmp_path / "data")
    marker = tmp_path / "MARKER"
    (tmp_path / "data" / "data_batch_1").write_bytes(pickle.dumps({b"data": _Marker(marker)}, protocol=2))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--arch", "dense",
                 "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "data_batch_1 is not a CIFAR-10 python batch" in err, err
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == before
