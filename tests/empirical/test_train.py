"""Training: records per epoch, exact resume after kill -9 and Ctrl-C, unreadable and unwritable
checkpoints, the CLI."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from advdim.empirical import Method, TrainConfig, train

from advdim.errors import AdvdimError, Interrupted
from advdim.store import RunStore

CFG = dict(dataset="synthetic", n_train=96, n_test=32, n_eval=16, epochs=3, batch_size=32, method="pgd", eps=0.05)

SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from advdim.empirical import TrainConfig, train
    from advdim.store import RunStore
    cfg = TrainConfig(**json.loads(sys.argv[1]))
    pause = sys.argv[4] == "pause"
    def on_epoch(e, rec):
        if pause and e == 1:
            open(sys.argv[3] + ".epoch1", "w").close()
            time.sleep(600)
    with RunStore(sys.argv[2]) as store:
        r = train(cfg, store=store, checkpoint=sys.argv[3], resume=True, on_epoch=on_epoch)
    print(json.dumps(list(r.history)))
""")


def _run(args, tmp_path):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(CFG), *args], stdout=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_resume_after_kill_is_exact(tmp_path):
    ref = _run([str(tmp_path / "a.sqlite"), str(tmp_path / "a.ckpt"), "go"], tmp_path)
    want = json.loads(ref.communicate(timeout=300)[0])
    ckpt = tmp_path / "b.ckpt"
    proc = _run([str(tmp_path / "b.sqlite"), str(ckpt), "pause"], tmp_path)
    deadline = time.time() + 300
    while not (tmp_path / "b.ckpt.epoch1").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # kill -9 mid-run (after epoch 1 of 3)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with RunStore(tmp_path / "b.sqlite") as store:
        assert store.count("empirical.epoch") == 1
    resumed = _run([str(tmp_path / "b.sqlite"), str(ckpt), "go"], tmp_path)
    got = json.loads(resumed.communicate(timeout=300)[0])
    assert got == want  # every metric of every epoch, bit for bit
    with RunStore(tmp_path / "b.sqlite") as store:
        assert store.count("empirical.epoch") == 3


def test_training_learns_and_stores(tmp_path):
    cfg = TrainConfig(dataset="synthetic", n_train=256, n_test=64, n_eval=64, epochs=5, batch_size=32, lr=0.05)
    with RunStore(tmp_path / "s.sqlite") as store:
        r = train(cfg, store=store)
        assert store.count("empirical.epoch") == 5
    # 10 classes: chance is 0.1; 64 test points give a standard error sqrt(0.1*0.9/64) = 0.0375 at
    # chance, so 0.3 is > 5 standard errors above it (deterministic seed; fails only if nothing is learnt)
    assert r.final["test"]["acc"] > 0.3
    for split in ("train", "valid", "test"):
        m = r.final[split]
        assert m["grad_l1"] >= m["grad_l2"] > 0  # ||g||_1 >= ||g||_2
    assert 0 <= r.final["test"]["vuln_linf"] <= 1 and 0 <= r.final["test"]["vuln_l2"] <= 1
    assert "vuln_linf" not in r.history[0]["test"]  # attacks at the last epoch only (attack_every=0)


def test_validation_split_best_reload_and_lr_halving(monkeypatch):
    from advdim.empirical import _train

    accs = iter([0.9, 0.5, 0.7])  # validation accuracy of epochs 1, 2, 3: epoch 1 stays the best
    real_evaluate = _train.evaluate

    def fake_evaluate(model, data, images, *args, **kwargs):
        out = real_evaluate(model, data, images, *args, **kwargs)
        return {**out, "acc": next(accs)} if images.shape[0] == 10 else out  # the validation split

    starts = []
    real_objective = _train.objective

    def spy_objective(method, model, *args, **kwargs):
        if len(starts) < len(seen) + 1:
            starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_objective(method, model, *args, **kwargs)

    seen: list[int] = []
    monkeypatch.setattr(_train, "evaluate", fake_evaluate)
    monkeypatch.setattr(_train, "objective", spy_objective)
    cfg = TrainConfig(dataset="synthetic", n_train=100, n_test=16, n_eval=8, epochs=3, batch_size=90, lr=0.1,
                      halve_every=1, valid_fraction=0.1)  # one step per epoch: start of epoch e = first call
    r = train(cfg, on_epoch=lambda e, rec: seen.append(e))
    assert [h["lr"] for h in r.history] == [0.1, 0.05, 0.025]
    assert [h["valid"]["acc"] for h in r.history] == [0.9, 0.5, 0.7]
    # epochs 2 and 3 both start from the best weights, those at the end of epoch 1
    assert all(torch.equal(starts[1][k], starts[2][k]) for k in starts[1])
    assert not all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])
    train_idx, valid_idx = _train.split_validation(100, 0.1)
    assert len(valid_idx) == 10 and set(train_idx.tolist()).isdisjoint(valid_idx.tolist())
    with pytest.raises(AdvdimError, match="empty split"):
        _train.split_validation(4, 0.1)


def test_bad_config_and_foreign_checkpoint(tmp_path):
    with pytest.raises(AdvdimError):
        TrainConfig(method="magic")
    with pytest.raises(AdvdimError):
        TrainConfig(epochs=0)
    cfg = TrainConfig(dataset="synthetic", n_train=32, n_test=16, n_eval=8, epochs=1, batch_size=16)
    train(cfg, checkpoint=tmp_path / "c.ckpt")
    other = TrainConfig(dataset="synthetic", n_train=32, n_test=16, n_eval=8, epochs=1, batch_size=16,
                        method=Method.GP2, eps=0.1)
    with pytest.raises(AdvdimError, match="another configuration"):
        train(other, checkpoint=tmp_path / "c.ckpt", resume=True)


def test_cli_train_json():
    out = subprocess.run([sys.executable, "-m", "advdim", "train", "--dataset", "synthetic", "--size", "28",
                          "--method", "gp1", "--eps", "0.01", "--epochs", "1", "--n-train", "64", "--n-test", "32",
                          "--n-eval", "16", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["d"] == 28 * 28 and data["final"]["epoch"] == 1
    bad = subprocess.run([sys.executable, "-m", "advdim", "train", "--method", "nope"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "unknown method" in bad.stderr


TINY = dict(dataset="synthetic", n_train=40, n_test=16, n_eval=8, batch_size=16)


def test_an_unreadable_checkpoint_is_one_line_and_left_alone(tmp_path):
    cfg = TrainConfig(**TINY, epochs=1)
    good = tmp_path / "good.ckpt"
    train(cfg, checkpoint=good)
    whole = good.read_bytes()
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint\n" * 64)
    (tmp_path / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])
    torch.save([1, 2], tmp_path / "list.ckpt")
    torch.save({"config": cfg.store_config(), "epoch": 1}, tmp_path / "keys.ckpt")
    torch.save(cfg, tmp_path / "object.ckpt")  # a pickled object: refused by a weights-only load
    reasons = {"empty": "the file is empty", "garbage": "not a torch archive: truncated or another format",
               "truncated": "not a torch archive: truncated or another format", "list": "it holds a list",
               "keys": "it lacks lr, model, optimizer", "object": "UnpicklingError: Weights only load failed"}
    for name, reason in reasons.items():
        path = tmp_path / f"{name}.ckpt"
        before = path.read_bytes()
        with pytest.raises(AdvdimError) as info:
            train(cfg, checkpoint=path, resume=True)
        message = str(info.value)
        assert message.startswith(f"checkpoint {str(path)!r} is not a readable advdim checkpoint ("), message
        assert reason in message and message.endswith("; delete it to start over") and "\n" not in message
        assert path.read_bytes() == before


def test_cli_empty_checkpoint_is_one_line_exit_2(tmp_path):
    path = tmp_path / "empty.ckpt"
    path.touch()
    out = subprocess.run([sys.executable, "-m", "advdim", "train", "--dataset", "synthetic", "--size", "28",
                          "--epochs", "1", "--n-train", "32", "--n-test", "16", "--n-eval", "8", "--checkpoint",
                          str(path), "--resume"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"advdim: error: checkpoint {str(path)!r} is not a readable advdim checkpoint "
                                       "(the file is empty); delete it to start over"]


def _failing_save(exc):
    def save(obj, f):
        f.write(b"half a checkpoint" * 100)
        raise exc

    return save


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_temporary(tmp_path, monkeypatch, exc):
    cfg = TrainConfig(**TINY, epochs=2)
    ckpt = tmp_path / "c.ckpt"
    after_epoch_1 = []

    def on_epoch(e, rec):  # from epoch 2 on, writing fails after a part of the file
        after_epoch_1.append(ckpt.read_bytes())
        monkeypatch.setattr(torch, "save", _failing_save(exc))

    with RunStore(tmp_path / "s.sqlite") as store:
        want = (AdvdimError if isinstance(exc, OSError) else Interrupted)
        with pytest.raises(want) as info:
            train(cfg, store=store, checkpoint=ckpt, on_epoch=on_epoch)
        assert store.count("empirical.epoch") == 2
    monkeypatch.undo()
    if isinstance(exc, OSError):
        assert str(info.value) == (f"cannot write checkpoint {str(ckpt)!r}: No space left on device; 2 epochs are in "
                                   "the run store; the checkpoint of epoch 1 is intact; free space and rerun with "
                                   "--resume")
    else:
        assert str(info.value) == "interrupted in epoch 2 of 2: 1 epoch stored and checkpointed; rerun with --resume"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c.ckpt")) == ["c.ckpt"]  # no .tmp
    assert ckpt.read_bytes() == after_epoch_1[0]
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(**TINY, epochs=3, halve_every=2, method="pgd", eps=0.05)
    torch.manual_seed(0)
    want = train(cfg).history

    def ctrl_c(e, rec):
        if e == 1:
            raise KeyboardInterrupt

    ckpt = tmp_path / "c.ckpt"
    with RunStore(tmp_path / "s.sqlite") as store:
        torch.manual_seed(0)
        with pytest.raises(Interrupted) as info:
            train(cfg, store=store, checkpoint=ckpt, on_epoch=ctrl_c)
        assert str(info.value) == "interrupted after epoch 1 of 3: 1 epoch stored and checkpointed; rerun with --resume"
        assert store.count("empirical.epoch") == 1
        torch.manual_seed(1)  # the checkpoint restores the generators: the state before resuming does not matter
        got = train(cfg, store=store, checkpoint=ckpt, resume=True).history
        assert store.count("empirical.epoch") == 3
    assert got == want
    assert not (tmp_path / "c.ckpt.tmp").exists()


def test_ctrl_c_without_a_checkpoint_says_nothing_can_be_resumed(tmp_path):
    cfg = TrainConfig(**TINY, epochs=2)

    def ctrl_c(e, rec):
        raise KeyboardInterrupt

    with RunStore(tmp_path / "s.sqlite") as store, pytest.raises(Interrupted) as info:
        train(cfg, store=store, on_epoch=ctrl_c)
    assert str(info.value) == ("interrupted after epoch 1 of 2: 1 epoch in the run store, nothing to resume without "
                               "--checkpoint")
