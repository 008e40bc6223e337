"""Checkpoints (issue 24, item 4): a rewritten checkpoint keeps its file mode (``--resume`` left a
0600 file 0644), and a full disk is one line naming the checkpoint that suggests ``--resume`` only
when a checkpoint of the run is on disk to resume from."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from advdim.empirical import TrainConfig, train
from advdim.empirical import _train as train_module

from advdim.errors import AdvdimError, Interrupted

TINY = dict(dataset="synthetic", n_train=20, n_test=8, n_eval=4, batch_size=16, attack_steps=2)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def first_epoch_only(ckpt: Path) -> TrainConfig:
    """A run of 2 epochs stopped (Ctrl-C) after the first is checkpointed; returns its configuration."""
    config = TrainConfig(**TINY, epochs=2)

    def stop(epoch: int, record: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        train(config, checkpoint=ckpt, on_epoch=stop)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    return config


@pytest.mark.parametrize("private", [0o600, 0o604])
def test_a_resumed_run_keeps_the_checkpoint_s_mode(tmp_path: Path, private: int) -> None:
    ckpt = tmp_path / "c.ckpt"
    config = first_epoch_only(ckpt)
    os.chmod(ckpt, private)
    train(config, checkpoint=ckpt, resume=True)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2  # rewritten ...
    assert mode(ckpt) == private  # ... with the mode it had
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]


def test_a_new_checkpoint_gets_the_umask_s_mode_and_a_stale_temporary_is_replaced(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.ckpt"
    stale = tmp_path / "c.ckpt.tmp"
    stale.write_bytes(b"left by a killed run")
    os.chmod(stale, 0o666)
    old = os.umask(0o027)
    try:
        train_module._atomic_save({"x": 1}, ckpt)
    finally:
        os.umask(old)
    assert mode(ckpt) == 0o640 and not stale.exists()
    assert torch.load(ckpt, weights_only=True) == {"x": 1}


def _no_space(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["save", "fsync"])
def test_a_full_disk_at_the_first_checkpoint_names_it_and_no_resume(tmp_path: Path, where: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "c.ckpt"
    monkeypatch.setattr(*((torch, "save") if where == "save" else (train_module.os, "fsync")), _no_space)
    with pytest.raises(AdvdimError) as info:
        train(TrainConfig(**TINY, epochs=1), checkpoint=ckpt)
    assert str(info.value) == (f"cannot write checkpoint {str(ckpt)!r}: No space left on device; no checkpoint of "
                               "this run was written; free space and rerun")
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its temporary file


def test_a_full_disk_after_a_checkpoint_suggests_resume_and_keeps_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "c.ckpt"
    config = first_epoch_only(ckpt)
    os.chmod(ckpt, 0o600)
    before = ckpt.read_bytes()
    monkeypatch.setattr(train_module.os, "fsync", _no_space)
    with pytest.raises(AdvdimError) as info:
        train(config, checkpoint=ckpt, resume=True)
    assert str(info.value) == (f"cannot write checkpoint {str(ckpt)!r}: No space left on device; the checkpoint of "
                               "epoch 1 is intact; free space and rerun with --resume")
    assert ckpt.read_bytes() == before and mode(ckpt) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]
