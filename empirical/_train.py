"""Training with a defence, the reference's validation schedule, per-epoch metrics, exact resume.

Schedule (the reference implementation's, with CPU-sized defaults): ``valid_fraction`` of the
training images (a permutation seeded 42) is held out for validation; SGD with momentum and,
optionally, ``weight_decay`` (SGD's coupled L2: ``lambda * w`` added to each weight's gradient,
the form of Galloway et al. 2019; the reference uses none); at the start of every epoch ``e > 0``
with ``e % halve_every == 0`` the weights of the best validation accuracy so far are reloaded and
the learning rate is halved (the optimizer's momentum is kept, as in the reference).

``batchnorm`` inserts a batch-norm layer after every conv of the resolved net (conv -> BN -> ReLU,
the paper's block; :func:`with_batchnorm`).  Batch statistics are used in training (the training
objective, gradient penalties included, runs in train mode), running statistics everywhere else:
every measurement (gradients, attacks, vulnerability) is taken in **eval mode**, where a sample's
input gradient does not depend on the rest of its batch; each epoch record says so
(``"measure_mode": "eval"``).

Every epoch the model is evaluated (eval mode) on the whole validation split and on the first
``n_eval`` images of the training part and of the test set: accuracy, mean cross-entropy,
``E||d_x L||_1`` and ``E||d_x L||_2`` (per sample, w.r.t. the normalised input).  On the test
set (as the reference), every ``attack_every`` epochs and always at the last one, also the adversarial
vulnerability (Definition 1: the share of points whose predicted label changes under an attack)
and adversarial damage ``E[(L(x + delta) - L(x)) / eps]`` for an l_inf PGD attack of radius
``attack_eps`` and an l_2 PGD attack of radius ``attack_eps * sqrt(d)`` (the same size per pixel:
``||eps * sign(g)||_2 = eps sqrt(d)``), both ``attack_steps`` steps of size
``radius / (0.75 * steps)``, no random start, clipped to the image box (the reference's
test-time attack).

Checkpoints (one file, replaced atomically after each epoch) hold the model, the optimizer, the
learning rate, the best validation accuracy and its weights, the states of the data-order and
attack generators, the global torch RNG and the history, so that a run killed at any point and
resumed gives exactly the numbers of an uninterrupted run (CPU).  The epoch's record is written
to the run store before the checkpoint: a crash in between re-runs that epoch, identically, and
the store ignores the duplicate.

    >>> cfg = TrainConfig(dataset="synthetic", n_train=40, n_test=16, n_eval=8, epochs=1, batch_size=16)
    >>> result = train(cfg)
    >>> sorted(result.final["test"])[:3], sorted(result.final["valid"]) == sorted(result.final["train"])
    (['acc', 'damage_l2', 'damage_linf'], True)
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from advdim.empirical import attacks
from advdim.empirical._data import Dataset, DatasetName, load
from advdim.empirical._defences import Method, objective
from torch import nn
from torch.nn import functional as F

from advdim.arch import BatchNorm, Conv, Spec
from advdim.build import Init, resolve_device
from advdim.errors import AdvdimError, Interrupted
from advdim.gradients import Target, input_gradient, lp_norm
from advdim.store import RunStore

EPOCH_KIND = "empirical.epoch"
DEFAULT_ARCH = "strided(channels=16,final=7,padding=zeros)"
VALID_SEED = 42  # the reference's seed of the validation split
#: options added after the first stored runs: left out of the JSON (and so of the store keys) at
#: their defaults, so that runs stored before they existed keep their keys
OPTIONAL_DEFAULTS: dict[str, Any] = {"weight_decay": 0.0, "batchnorm": False, "arch_source": None}


def with_batchnorm(spec: Spec) -> Spec:
    """``spec`` with a batch-norm layer after every conv (conv -> BN -> ReLU, the paper's block).

    >>> from advdim.arch import format_spec, parse
    >>> format_spec(with_batchnorm(parse("1x8x8 > conv(4,k=3) > relu > flatten > dense(10)")))
    '1x8x8 > conv(4) > batchnorm > relu > flatten > dense(10)'
    """
    layers: list[Any] = []
    for layer in spec.layers:
        layers.append(layer)
        if isinstance(layer, Conv):
            layers.append(BatchNorm())
    return Spec(spec.input_shape, tuple(layers))


@dataclass(frozen=True)
class TrainConfig:
    """One training run (JSON round trip with :meth:`to_json` / :meth:`from_json`).

    Attributes:
        dataset: ``fashion-mnist``, ``cifar10`` or ``synthetic``.
        size: input side after resampling (``None``: native, or 32 with ``pad``).
        pad: zero-pad 28 -> 32 before resampling.
        arch: what :func:`advdim.arch.resolve_target` takes (a family with its defaults, a member
            ``gap(channels=16,final=7)``, spec text, a user family ``file.py:NAME``) or an
            ``nn.Module`` factory with an ``input_shape`` parameter; built at ``size``
            (``advdim.empirical._models``).
        batchnorm: insert a batch-norm layer after every conv of ``arch`` (:func:`with_batchnorm`).
        method, eps: the defence and its strength (normalised input units).
        epochs, batch_size, lr, momentum: SGD with momentum, initial lr.
        weight_decay: SGD's coupled L2 coefficient (``torch.optim.SGD(weight_decay=...)``: the
            gradient of every parameter gets ``weight_decay * w``; 0: none, as the reference).
        halve_every: reload the best-validation weights and halve the lr every this many epochs
            (the reference: 30 of 200 epochs; 0: never).
        valid_fraction: share of the ``n_train`` images held out for validation (reference 0.1).
        n_train, n_test: the first examples of each split used (``None``: all).
        n_eval: examples of the train and test sets evaluated every epoch.
        attack_eps, attack_steps: the test-time PGD (l_inf radius; l_2 radius ``attack_eps sqrt(d)``).
        attack_every: run the test-time attacks every this many epochs (0: at the last epoch only;
            the reference: 1).
        seed: model init, data order and attack randomness.
        data_dir: folder of the dataset files (``None``: the default place).
    """

    dataset: str = "fashion-mnist"
    size: int | None = None
    pad: bool = False
    arch: str = DEFAULT_ARCH
    init: str = "he"
    method: Method = Method.PLAIN
    eps: float = 0.0
    epochs: int = 6
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    halve_every: int = 2
    valid_fraction: float = 0.1
    n_train: int | None = 20000
    n_test: int | None = 2000
    n_eval: int = 1000
    attack_eps: float = 0.004
    attack_steps: int = 10
    attack_every: int = 0
    seed: int = 0
    data_dir: str | None = None
    device: str = "cpu"
    weight_decay: float = 0.0
    batchnorm: bool = False
    #: the hash of the source file behind ``arch`` when it names the user's code (set from the file;
    #: a stored configuration whose hash differs from the file's now is refused)
    arch_source: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Method.parse(self.method))
        DatasetName.parse(self.dataset)
        Init.parse(self.init)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "n_eval": self.n_eval,
                    "attack_steps": self.attack_steps}
        for name, v in positive.items():
            if not isinstance(v, int) or v < 1:
                raise AdvdimError(f"{name} must be a positive integer, got {v!r}")
        for name, f in {"eps": self.eps, "lr": self.lr, "momentum": self.momentum,
                        "attack_eps": self.attack_eps, "weight_decay": self.weight_decay}.items():
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f < 0:
                raise AdvdimError(f"{name} must be finite and >= 0, got {f!r}")
        for name, v in {"halve_every": self.halve_every, "attack_every": self.attack_every}.items():
            if not isinstance(v, int) or v < 0:
                raise AdvdimError(f"{name} must be an integer >= 0, got {v!r}")
        if self.lr == 0 or self.attack_eps == 0:
            raise AdvdimError("lr and attack_eps must be positive")
        if not 0 <= self.valid_fraction < 1:
            raise AdvdimError(f"valid_fraction must be in [0, 1), got {self.valid_fraction!r}")
        if not isinstance(self.batchnorm, bool):
            raise AdvdimError(f"batchnorm must be true or false, got {self.batchnorm!r}")
        object.__setattr__(self, "weight_decay", float(self.weight_decay))
        from advdim.empirical._models import arch_source

        source = arch_source(self.arch) if isinstance(self.arch, str) else None
        if self.arch_source is not None and self.arch_source != source:
            raise AdvdimError(f"{self.arch} has changed since this run was configured (source hash {source}, "
                              f"stored {self.arch_source}): a run never mixes two versions of a file; use a new "
                              "store or restore the file")
        object.__setattr__(self, "arch_source", source)

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON; the options of :data:`OPTIONAL_DEFAULTS` only when set."""
        out = dataclasses.asdict(self)
        out["method"] = self.method.value
        for key, default in OPTIONAL_DEFAULTS.items():
            if out[key] == default:
                del out[key]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise AdvdimError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def store_config(self) -> dict[str, Any]:
        """The configuration as a store key (without the machine-specific data folder and device); an
        architecture from the user's code carries the hash of its source file (``arch_source``)."""
        out = self.to_json()
        out.pop("data_dir")
        out.pop("device")
        return out


@dataclass(frozen=True)
class TrainResult:
    """A finished run: per-epoch metrics (``history[e]["train" | "test"][metric]``) and the model."""

    config: TrainConfig
    history: tuple[dict[str, Any], ...]
    model: nn.Module = field(repr=False)
    d: int = 0
    #: per-sample values on the evaluated test images at the last epoch trained in this call
    #: (``grad_l1``, and ``vuln_linf`` / ``vuln_l2`` as 0 / 1): shape ``(n,)`` each (see
    #: :func:`evaluate`'s ``samples``); empty when a resumed run had no epoch left to train
    test_samples: dict[str, list[float]] = field(default_factory=dict, repr=False)
    #: the same per-sample ``grad_l1`` at initialisation (``train(init_samples=True)``; else empty)
    init_samples: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]


def evaluate(model: nn.Module, data: Dataset, images: torch.Tensor, labels: torch.Tensor, size: int | None,
             pad: bool, attack_eps: float, attack_steps: int, batch_size: int = 128,
             device: torch.device | str = "cpu", attack: bool = True,
             samples: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Metrics on ``images`` (uint8) / ``labels`` (see the module docstring); the vulnerability and
    damage keys only with ``attack``.  Measured in eval mode (the mode of every submodule is
    restored after).

    Args:
        samples: when given, filled with the per-sample values in the order of ``images``:
            ``grad_l1`` (``||d_x L||_1``) and, with ``attack``, ``vuln_linf`` / ``vuln_l2`` (1.0
            when the attack changes the prediction, else 0.0).
    """
    from advdim.gradients import mode

    with mode(model, False):
        return _evaluate(model, data, images, labels, size, pad, attack_eps, attack_steps, batch_size, device,
                         attack, samples)


def _evaluate(model: nn.Module, data: Dataset, images: torch.Tensor, labels: torch.Tensor, size: int | None,
              pad: bool, attack_eps: float, attack_steps: int, batch_size: int, device: torch.device | str,
              attack: bool, samples: dict[str, list[float]] | None) -> dict[str, float]:
    sums: dict[str, float] = {}
    sq_l1 = 0.0
    n = images.shape[0]
    bounds = tuple(b.to(device) for b in data.bounds())
    for start in range(0, n, batch_size):
        x = data.batch(images[start:start + batch_size], size, pad, device=device)
        y = labels[start:start + batch_size].to(device)
        d = x[0].numel()
        with torch.no_grad():
            logits = model(x)
            loss = F.cross_entropy(logits, y, reduction="none")
        pred = logits.argmax(dim=1)
        g = input_gradient(model, x, Target.LOSS, labels=y).double()
        l1, l2 = lp_norm(g, 1), lp_norm(g, 2)
        batch = {"acc": (pred == y).double().sum(), "loss": loss.double().sum(), "grad_l1": l1.sum(),
                 "grad_l2": l2.sum()}
        sq_l1 += float((l1 * l1).sum())
        if samples is not None:
            samples.setdefault("grad_l1", []).extend(l1.cpu().tolist())
        radii = (("linf", math.inf, attack_eps), ("l2", 2.0, attack_eps * math.sqrt(d))) if attack else ()
        for tag, p, radius in radii:
            adv = attacks.pgd(model, x, y, radius, p, attack_steps, bounds=(bounds[0], bounds[1]))
            with torch.no_grad():
                adv_logits = model(adv)
                adv_loss = F.cross_entropy(adv_logits, y, reduction="none")
            flipped = (adv_logits.argmax(dim=1) != pred).double()
            batch[f"vuln_{tag}"] = flipped.sum()
            if samples is not None:
                samples.setdefault(f"vuln_{tag}", []).extend(flipped.cpu().tolist())
            batch[f"damage_{tag}"] = ((adv_loss - loss).double() / radius).sum()
        for k, v in batch.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    out = {k: v / n for k, v in sums.items()}
    var = max(sq_l1 / n - out["grad_l1"] ** 2, 0.0)
    out["grad_l1_se"] = math.sqrt(var / max(n - 1, 1))
    return dict(sorted(out.items()))


def split_validation(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, valid)`` of ``n`` training images, ``round(fraction * n)`` of them held out
    by a permutation seeded :data:`VALID_SEED` (the same split for every run of the same ``n``).

    >>> tr, va = split_validation(10, 0.2)
    >>> len(tr), len(va), sorted(tr.tolist() + va.tolist()) == list(range(10))
    (8, 2, True)
    """
    n_valid = round(fraction * n)
    if fraction > 0 and not 1 <= n_valid < n:
        raise AdvdimError(f"a validation share of {fraction:g} of {n} training images leaves an empty split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VALID_SEED))
    return perm[n_valid:], perm[:n_valid]


#: the keys of a checkpoint (see :func:`train`)
CHECKPOINT_KEYS = ("config", "epoch", "lr", "model", "optimizer", "best_acc", "best_model", "order_gen",
                   "attack_gen", "torch_rng", "history")


def _atomic_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``<path>.tmp``, flush it to disk, then rename it over ``path``: ``path`` is
    either the previous file or the new one, whole.  On any failure (a full disk, Ctrl-C) the
    temporary file is removed and the error re-raised; ``path`` is left as it was.

    A rewritten file keeps the permission bits of the one it replaces (a checkpoint the user made
    private, 0600, stays private); the temporary file is private while it is written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None  # a new file: the usual 0666 less the umask
    try:
        tmp.unlink(missing_ok=True)  # a leftover of a killed run: created afresh with the mode below
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666)
        # through a Python file so that a write error is an OSError (torch's own writer turns it
        # into a RuntimeError that names no cause)
        with open(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unreadable(path: Path, reason: str) -> AdvdimError:
    reason = " ".join(reason.split())  # one line
    if len(reason) > 120:
        reason = reason[:117] + "..."
    return AdvdimError(f"checkpoint {str(path)!r} is not a readable advdim checkpoint ({reason}); "
                       "delete it to start over")


def _load_checkpoint(path: Path, device: torch.device, config: TrainConfig) -> dict[str, Any]:
    """The training state saved in ``path`` for ``config``; a file that is not one (empty,
    truncated, another format, another configuration) raises a one-line :class:`AdvdimError`."""
    try:
        size = path.stat().st_size
        if size == 0:
            raise _unreadable(path, "the file is empty")
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index is at the end
            raise _unreadable(path, f"{size} bytes that are not a torch archive: truncated or another format")
        # weights only: plain containers and tensors, no code run from the file
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError as err:
        raise AdvdimError(f"cannot read checkpoint {str(path)!r}: {err.strerror or err}") from None
    except AdvdimError:
        raise
    except Exception as err:  # torch.load raises many types: UnpicklingError, RuntimeError, ...
        raise _unreadable(path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(state, dict):
        raise _unreadable(path, f"it holds a {type(state).__name__}, not a training state")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise _unreadable(path, f"it lacks {', '.join(missing)}")
    if state["config"] != config.store_config():
        raise AdvdimError(f"checkpoint {str(path)!r} belongs to another configuration; remove it or change it")
    return state


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _interrupted(config: TrainConfig, running: int | None, done: int, saved: int, stored: bool,
                 checkpoint: Path | None) -> Interrupted:
    """The message of a Ctrl-C: where training stood and what a rerun can resume from."""
    where = (f"interrupted in epoch {running} of {config.epochs}" if running is not None
             else f"interrupted after epoch {done} of {config.epochs}")
    if checkpoint is None:
        kept = f"{_epochs(done)} in the run store, " if stored and done else ""
        return Interrupted(f"{where}: {kept}nothing to resume without --checkpoint")
    if saved == 0:
        return Interrupted(f"{where}: no epoch finished, nothing to resume")
    kept = "stored and checkpointed" if stored else "checkpointed"
    return Interrupted(f"{where}: {_epochs(saved)} {kept}; rerun with --resume")


def train(config: TrainConfig, store: RunStore | None = None, checkpoint: str | os.PathLike[str] | None = None,
          resume: bool = False, progress: bool = False,
          on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
          data: Dataset | None = None, init_samples: bool = False) -> TrainResult:
    """Train ``config.arch`` on ``config.dataset`` with ``config.method``; metrics every epoch.

    Args:
        store: run store receiving one ``empirical.epoch`` record per epoch.
        checkpoint: file of the checkpoint written after every epoch.
        resume: continue from ``checkpoint`` when it exists (its configuration must match).
        progress: show a progress bar on stderr.
        on_epoch: called with ``(epoch, record)`` after each epoch is stored and checkpointed.
        data: an already loaded dataset (default: load ``config.dataset``).
        init_samples: also measure ``||d_x L||_1`` per evaluated test point of the model at
            initialisation, before the first step (``TrainResult.init_samples``; not on a resumed run).
    Returns:
        The :class:`TrainResult` (the model of the last epoch, as the reference's ``last.pt``).
    """
    from advdim.alloc import keep_freed_memory

    keep_freed_memory()  # large activations otherwise cost page faults every step (advdim.alloc)
    device = resolve_device(config.device)
    if data is None:
        data = load(config.dataset, config.data_dir, seed=config.seed)
    data = data.subset(config.n_train, config.n_test)
    size = config.size if config.size is not None else (32 if config.pad else data.native)
    from advdim.empirical._models import build_model

    built = build_model(config.arch, size, data.channels, Init.parse(config.init), config.seed, device,
                        config.batchnorm, with_batchnorm)
    if built.n_classes != data.n_classes:
        raise AdvdimError(f"the architecture has {built.n_classes} logits but the data {data.n_classes} classes")
    model = built.model
    d = data.channels * size * size
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    order_gen = torch.Generator().manual_seed(config.seed)
    attack_gen = torch.Generator().manual_seed(config.seed + 1)
    bounds = tuple(b.to(device) for b in data.bounds())
    train_idx, valid_idx = split_validation(data.x_train.shape[0], config.valid_fraction)
    x_train, y_train = data.x_train[train_idx], data.y_train[train_idx]
    history: list[dict[str, Any]] = []
    test_samples: dict[str, list[float]] = {}
    start_epoch, lr = 0, config.lr
    best_acc, best_state = -1.0, None
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and resume and ckpt.is_file():
        state = _load_checkpoint(ckpt, device, config)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            order_gen.set_state(state["order_gen"])
            attack_gen.set_state(state["attack_gen"])
            torch.set_rng_state(state["torch_rng"])
            history = list(state["history"])
            start_epoch, lr = int(state["epoch"]), float(state["lr"])
            best_acc, best_state = float(state["best_acc"]), state["best_model"]
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise _unreadable(ckpt, f"its state does not fit the model: {exc}") from None
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    n_eval = config.n_eval
    evals = {"train": (x_train[:n_eval], y_train[:n_eval]), "test": (data.x_test[:n_eval], data.y_test[:n_eval])}
    if len(valid_idx):
        evals["valid"] = (data.x_train[valid_idx], data.y_train[valid_idx])
    at_init: dict[str, list[float]] = {}
    if init_samples and start_epoch == 0:  # the same test points as the last epoch's samples, before training
        model.eval()
        evaluate(model, data, *evals["test"], size, config.pad, config.attack_eps, config.attack_steps, device=device,
                 attack=False, samples=at_init)
    from contextlib import nullcontext

    bar_cm: Any = nullcontext(None)
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from advdim.console import err

        bar_cm = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), console=err)
    running: int | None = None  # the epoch in progress (1-based); None between epochs
    saved = start_epoch  # the epoch of the checkpoint on disk
    try:
        with bar_cm as bar:
            task = None
            if bar is not None:
                task = bar.add_task(f"{config.method.value} eps={config.eps:g} size={size}",
                                    total=(config.epochs - start_epoch) * steps_per_epoch)
            for epoch in range(start_epoch, config.epochs):
                running = epoch + 1
                if config.halve_every and epoch > 0 and epoch % config.halve_every == 0:
                    if best_state is not None:  # the reference reloads best.pt, then halves the lr
                        model.load_state_dict(best_state)
                    lr /= 2
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                model.train()
                perm = torch.randperm(n, generator=order_gen)
                total, count = 0.0, 0
                for s in range(steps_per_epoch):
                    idx = perm[s * config.batch_size:(s + 1) * config.batch_size]
                    x = data.batch(x_train[idx], size, config.pad, device=device)
                    y = y_train[idx].to(device)
                    loss = objective(config.method, model, x, y, config.eps, attack_gen, bounds=(bounds[0], bounds[1]))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                    if bar is not None:
                        bar.advance(task)
                if not math.isfinite(total):
                    raise AdvdimError(f"training diverged at epoch {epoch + 1} (loss {total}); lower --lr or --eps")
                model.eval()
                last = epoch + 1 == config.epochs
                attack = last or (config.attack_every > 0 and (epoch + 1) % config.attack_every == 0)
                # every measurement in eval mode: batch norm uses its running statistics
                record: dict[str, Any] = {"epoch": epoch + 1, "objective": total / count, "lr": lr, "d": d,
                                          "size": size, "measure_mode": "eval"}
                test_samples = {}
                for split, (xs, ys) in evals.items():
                    record[split] = evaluate(model, data, xs, ys, size, config.pad, config.attack_eps,
                                             config.attack_steps, device=device, attack=attack and split == "test",
                                             samples=test_samples if split == "test" else None)
                if "valid" in record and record["valid"]["acc"] > best_acc:
                    best_acc = record["valid"]["acc"]
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                history.append(record)
                if store is not None:
                    store.put(EPOCH_KIND, {**config.store_config(), "epoch": epoch + 1}, record)
                if ckpt is not None:
                    try:
                        _atomic_save({"config": config.store_config(), "epoch": epoch + 1, "lr": lr,
                                      "model": model.state_dict(),
                                      "optimizer": optimizer.state_dict(), "best_acc": best_acc,
                                      "best_model": best_state, "order_gen": order_gen.get_state(),
                                      "attack_gen": attack_gen.get_state(), "torch_rng": torch.get_rng_state(),
                                      "history": history}, ckpt)
                    except OSError as exc:
                        in_store = (f"{_epochs(epoch + 1)} {'is' if epoch == 0 else 'are'} in the run store; "
                                    if store is not None else "")
                        before = (f"the checkpoint of epoch {saved} is intact" if saved
                                  else "no checkpoint of this run was written")
                        fix = "free space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
                        # --resume (the train command's) only where a checkpoint of this run is on disk
                        rerun = "rerun with --resume" if saved else "rerun"
                        raise AdvdimError(f"cannot write checkpoint {str(ckpt)!r}: {exc.strerror or exc}; {in_store}"
                                          f"{before}; {fix} and {rerun}") from None
                    saved = epoch + 1
                running = None
                if on_epoch is not None:
                    on_epoch(epoch + 1, record)
    except KeyboardInterrupt:
        raise _interrupted(config, running, len(history), saved if ckpt is not None else 0, store is not None,
                           ckpt) from None
    model.eval()
    return TrainResult(config, tuple(history), model, d, test_samples, at_init)
