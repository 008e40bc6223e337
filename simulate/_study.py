"""A family study: random topologies x sizes -> sweep cells -> slope fits -> verdicts.

A topology (a random member of a family, e.g. ``strided(channels=8,kernel=5,final=2,...)``) is
drawn once and instantiated at every input side ``s`` (``d = C s^2``), so slopes are measured
within topologies.  One *cell* is one topology at one size: ``draws`` independent weight draws
of it, each on ``inputs`` Gaussian inputs, evaluated in one batched engine call.  Cells are run
by :func:`advdim.sweep.run_sweep` (in-process, local processes or Dask) and stored one by one.

    >>> res = study("dense", sizes=(4, 8), channels=1, nets=3, draws=2, inputs=2, seed=0,
    ...             progress=False, with_theory=False)
    >>> res.q["2"].measured_slope == res.q["2"].measured_slope
    True
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from advdim.simulate._analysis import (
    RANDOM_INF_DRAWS,
    TopologyLaw,
    Units,
    analyse,
    any_law,
    inf_prediction_exact,
    predict_topology,
)
from advdim.simulate._engine import Q_KEYS, batch_statistics, memory_entries, sample_norms, shortcut_applies
from advdim.simulate._result import FamilyResult, QResult
from advdim.theory._tokens import family_law

from advdim.arch import Conv, Dense, Family, Spec, Target, family, resolve_target, sample_family
from advdim.build import Init
from advdim.errors import AdvdimError, SpecError
from advdim.gradients import Target as GradTarget
from advdim.store import RunStore

__all__ = ["KIND", "FamilyResult", "QResult", "TopologyLaw", "Units", "analyse", "any_law", "cell_config",
           "inf_prediction_exact", "predict_topology", "run_cell", "study", "topologies", "width_index"]

KIND = "simulate.cell"


# --------------------------------------------------------------------------------------------
# Topologies and cells
# --------------------------------------------------------------------------------------------


def _fam_code(name: str) -> int:
    return zlib.crc32(name.encode())


def topologies(target: str | Target | Family | Spec, n: int, seed: int, sizes: Sequence[int],
               channels: int = 3) -> list[Family | Target]:
    """``n`` units of a study: random members of a built-in family valid at every size (seeded,
    reproducible), or ``n`` times a fixed target (a member, spec text, a user family), whose units
    then differ only by their weight draws.

    Topology ``t`` depends only on ``(seed, name, t)``, so a larger ``n`` extends a smaller one.
    """
    resolved = resolve_target(target)
    if not resolved.random:
        resolved.check_sizes(sizes, channels)
        return [resolved] * n
    name = resolved.text
    out: list[Family | Target] = []
    for t in range(n):
        rng = np.random.default_rng([seed, _fam_code(name), t])
        last = ""
        for _ in range(200):
            fam = sample_family(name, rng)
            try:
                for s in sizes:
                    fam.spec(int(s), channels)
            except SpecError as e:
                last = str(e)
                continue
            out.append(fam)
            break
        else:
            raise AdvdimError(f"family {name}: no random member is valid at every size {list(sizes)} (the last "
                              f"tried: {last})")
    return out


def width_index(fam: Family | Target, sizes: Sequence[int], channels: int) -> float:
    """How fast the sum of ``1/width`` over the weighted layers grows with ``log d`` (0: it does not).

    ``(sum_l 1/n_l at the largest size - at the smallest) / log(d_max / d_min)``, with ``n_l`` the
    output channels of a conv layer or the units of a dense one.  At finite width the spread of
    the path sum grows with each layer by a factor of order ``1/n_l``; in families whose depth grows
    with ``d`` (one stride-2 conv per doubling of the side) this bends ``log E||d_x f||_q`` away from
    the Gaussian law by an amount proportional to this index (``docs/simulate.md``).  Dense nets
    and any net of fixed depth have index 0.

    >>> round(width_index(family("strided", channels=8), (8, 64), 3), 4)
    0.0902
    """
    def inverse_widths(size: int) -> float:
        spec = fam.spec(int(size), channels)
        return sum(1.0 / layer.out_channels if isinstance(layer, Conv) else 1.0 / layer.out_features
                   for layer in spec.layers if isinstance(layer, (Conv, Dense)))

    lo, hi = min(sizes), max(sizes)
    return (inverse_widths(hi) - inverse_widths(lo)) / math.log(hi**2 / lo**2)


def cell_config(fam: Family | Target, t: int, size: int, channels: int, draws: int, inputs: int, seed: int,
                target: GradTarget, exact_shortcuts: bool, dtype: str = "float32", device: str = "cpu",
                data: str | None = None, data_dir: str | None = None, init: Init = Init.HE) -> dict[str, Any]:
    """One cell's configuration (its store key).  A random topology is named by its family and
    parameters; a fixed target by its canonical text and its concrete spec at this size, so that a
    worker needs neither the user's code nor the family registry."""
    if isinstance(fam, Target):
        cfg: dict[str, Any] = {"arch": fam.text, "spec": fam.spec(size, channels).to_json(), "topology": t,
                               "size": size, "channels": channels, "draws": draws, "inputs": inputs, "seed": seed,
                               "target": target.value, "shortcuts": exact_shortcuts, "dtype": dtype, "device": device}
    else:
        cfg = {"family": fam.name, "params": fam.to_json(), "topology": t, "size": size, "channels": channels,
               "draws": draws, "inputs": inputs, "seed": seed, "target": target.value,
               "shortcuts": exact_shortcuts, "dtype": dtype, "device": device}
    if init is not Init.HE:  # He cells keep their old keys (and stored results)
        cfg["init"] = init.value
    if data is not None:  # Gaussian cells keep their old keys (and stored results)
        cfg.update({"data": data, "data_dir": data_dir})
    return cfg


#: real-image inputs: each cell draws its inputs (with replacement) from the first IMAGE_POOL test images
IMAGE_POOL = 1000


@functools.lru_cache(maxsize=16)
def image_pool(data: str, data_dir: str | None, size: int) -> Any:
    """The first :data:`IMAGE_POOL` test images of ``data``, zero-padded to a multiple of 32, resampled
    to ``size`` (bilinear down, pixel copy up) and normalised: a float32 ``(M, C, size, size)`` tensor.

    Cached per process (sweep workers load a dataset once, not once per cell).
    """
    ds = _dataset(data, data_dir)
    return ds.batch(ds.x_test[:IMAGE_POOL], size=size, pad=True)


@functools.lru_cache(maxsize=4)
def _dataset(data: str, data_dir: str | None) -> Any:
    from advdim.empirical._data import load

    return load(data, data_dir)


def run_cell(config: dict[str, Any]) -> dict[str, Any]:
    """Sweep cell function: evaluate one topology at one size (module level: picklable)."""
    import torch

    from advdim.alloc import keep_freed_memory

    keep_freed_memory()  # also on Dask workers, which do not run the advdim command

    if "spec" in config:  # a fixed target: its concrete spec at this size
        spec = Spec.from_json(config["spec"])
        code = _fam_code(str(config["arch"]))
    else:
        params = {k: v for k, v in config["params"].items() if k != "family"}
        fam = family(config["family"], **params)
        spec = fam.spec(int(config["size"]), int(config["channels"]))
        code = _fam_code(fam.name)
    ss = np.random.SeedSequence([int(config["seed"]), code, int(config["topology"]), int(config["size"])])
    images = None
    if config.get("data") is not None:
        images = image_pool(str(config["data"]), config.get("data_dir"), int(config["size"]))
    norms = sample_norms(spec, int(config["draws"]), int(config["inputs"]), ss, GradTarget(config["target"]),
                         exact_shortcuts=bool(config["shortcuts"]), device=config["device"],
                         dtype=getattr(torch, config["dtype"]), images=images,
                         init=Init(config.get("init", "he")))
    out: dict[str, Any] = {"d": spec.d, "n": int(norms["2"].size)}  # no timings: results are reproducible
    for key, v in norms.items():
        out[key] = float(v.mean())
        out[f"{key}_per_draw"] = [float(x) for x in v.mean(axis=1)]
    return out


# --------------------------------------------------------------------------------------------
# Memory, estimated before any cell runs
# --------------------------------------------------------------------------------------------

#: peak of one batched forward + backward pass over the counted activations (every layer's output
#: and each padded copy, ``draws x inputs`` samples): autograd keeps them for the backward pass,
#: which adds gradients of the same sizes.  Measured peaks of cells of every family at sides
#: 128-256 on CPU: 1.2-3.3 times the counted activations, 0.24-0.59 of this estimate
ACTIVATION_FACTOR = 4


def cell_bytes(spec: Spec, draws: int, inputs: int, exact_shortcuts: bool = True, dtype: str = "float32",
               images: bool = False) -> int:
    """Upper estimate, in bytes, of the peak memory of one cell (:func:`run_cell`) of ``spec``.

    With ``n = draws * inputs`` samples of ``d`` coordinates and ``b`` bytes per value:

    - exact dense shortcut on Gaussian inputs: ``4 n d b`` (one Gaussian direction per sample and
      the temporaries of its norms; measured: 2 n d b);
    - exact dense shortcut on images: ``n d (8 + 8 b)`` (the float64 draw from the pool, the input,
      the projected noise and the gradient);
    - otherwise ``ACTIVATION_FACTOR n b A + 2 draws b P + 4 n d b`` with ``A`` the activation
      entries of one sample (input, every layer's output, every circularly or reflect padded copy;
      see :func:`advdim.simulate._engine.memory_entries`) and ``P`` the weights of one net, drawn
      and then scaled (``+ 8 n d`` for the image draw).

    >>> from advdim.arch import family
    >>> cell_bytes(family("dense", widths=(16,)).spec(1000, channels=3), draws=2, inputs=2) / 1e9
    0.192
    """
    b = 8 if dtype == "float64" else 2 if dtype in ("float16", "bfloat16") else 4
    n, d = draws * inputs, spec.d
    if exact_shortcuts and shortcut_applies(spec):
        return n * d * (8 + 8 * b) if images else 4 * n * d * b
    acts, weights = memory_entries(spec)  # residual branches and attention scores included
    return ACTIVATION_FACTOR * n * b * acts + 2 * draws * b * weights + 4 * n * d * b + (8 * n * d if images else 0)


def check_memory(topos: Sequence[Family | Target], sizes: Sequence[int], channels: int, draws: int, inputs: int,
                 exact_shortcuts: bool = True, dtype: str = "float32", device: str = "cpu",
                 data: str | None = None, workers: int = 0, scheduler: str | None = None,
                 with_theory: bool = False) -> None:
    """Refuse, before any cell runs, a study whose largest cells would not fit in memory.

    The need is the largest :func:`cell_bytes` over the topologies at the largest size, times the
    cells that run at once (``min(workers, topologies)`` with local workers), plus on CPU the
    resampled image pools every process caches (:func:`pool_bytes`).  Cells sent to a Dask
    ``scheduler`` run on its workers, whose memory is not known here: not checked.  ``with_theory``
    also checks the theory's exact path sums of every topology (computed in this process, whatever
    the executor).
    """
    top = max(sizes)
    if scheduler is None and topos:
        _check_cells(topos, sizes, channels, draws, inputs, exact_shortcuts, dtype, device, data, workers)
    if with_theory:
        try:
            from advdim.theory._law import check_cost
        except ImportError:  # no theory layer: no prediction to compute
            return
        for fam in topos:
            check_cost([fam.spec(int(top), channels)], [top], symmetry=False)


def _check_cells(topos: Sequence[Family | Target], sizes: Sequence[int], channels: int, draws: int, inputs: int,
                 exact_shortcuts: bool, dtype: str, device: str, data: str | None, workers: int) -> None:
    from advdim.cli_args import check_fits

    top = max(sizes)
    per_cell = max(cell_bytes(fam.spec(int(top), channels), draws, inputs, exact_shortcuts, dtype, data is not None)
                   for fam in topos)
    at_once = min(workers, len(topos)) if workers > 0 else 1
    need = per_cell * at_once
    if data is not None and device == "cpu":
        need += (1 + workers) * pool_bytes(sizes, channels)
    what = f"simulate {topos[0].name} at size {top} ({draws} draws x {inputs} inputs per cell"
    what += f", {at_once} cells at once)" if at_once > 1 else ")"
    check_fits(need, what, device)


def pool_bytes(sizes: Sequence[int], channels: int) -> int:
    """Bytes of the resampled image pools of :func:`image_pool` at every size (float32, cached per process)."""
    return 4 * IMAGE_POOL * channels * sum(int(s) ** 2 for s in sizes)


def _parse_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(s) for s in sizes)
    if len(out) < 2 or len(set(out)) != len(out) or any(s < 1 for s in out):
        raise AdvdimError(f"sizes must be at least 2 distinct positive sides, got {list(sizes)}")
    return tuple(sorted(out))


def study(
    family: str | Target | Family | Spec,
    sizes: Sequence[int] = (8, 16, 32, 64),
    channels: int | None = None,
    nets: int = 200,
    inputs: int = 4,
    seed: int = 0,
    device: str = "cpu",
    target: GradTarget | str = GradTarget.LOGIT,
    exact_shortcuts: bool = True,
    plant_exponent: float = 0.0,
    store: RunStore | None = None,
    *,
    draws: int = 4,
    workers: int = 0,
    scheduler: str | None = None,
    resume: bool = True,
    progress: bool = True,
    dtype: str = "float32",
    with_theory: bool = True,
    data: str | None = None,
    data_dir: str | None = None,
    init: Init | str = Init.HE,
    law_init: Init | str | None = None,
) -> FamilyResult:
    """Monte Carlo study of ``E||d_x f_k||_q`` against ``d`` for a target (Theorems 4-5, Appendix B).

    Args:
        family: what :func:`advdim.arch.resolve_target` takes.  A built-in family name (``dense``,
            ``strided``, ``avgpool``, ``maxpool``, ``gap``) draws ``nets`` random topologies; a fixed
            target (a member ``strided(kernel=5)``, spec text, a user family) is measured exactly
            as given: its ``nets`` units are independent weight draws of the same network
            (``draws`` each per size), and the intervals are over them.
        sizes: input sides ``s`` (``d = channels * s**2``).
        channels: input channels (default 3; a spec text keeps its own).
        nets: number of random topologies (the bootstrap resamples them).
        inputs: Gaussian inputs per weight draw; ``draws``: weight draws per topology and size.
        target: ``logit`` (``f_0``) or ``loss`` (cross-entropy with uniform labels).
        exact_shortcuts: use the exact dense-chain sampler where it applies.
        plant_exponent: multiply every measured norm by ``d**plant_exponent`` (a planted error,
            to show that the verdicts reject a wrong law).
        store: run store; every finished cell is written at once (``resume`` reuses them).
        workers, scheduler: executors of :func:`advdim.sweep.run_sweep`.
        with_theory: ask ``advdim.theory.predict`` for the finite-d prediction.
        data, data_dir: real images instead of Gaussian inputs: a dataset of ``advdim.empirical``
            (``fashion-mnist``, ``cifar10`` from ``data_dir``, ``synthetic``), its first
            :data:`IMAGE_POOL` test images resampled to each size; ``channels`` must be the dataset's.
        init: the weight law of the networks (``he``, ``torch``, ``glorot``, ``lecun``, ``orthogonal``).
        law_init: the init the predicted law assumes (default: ``init``); ``law_init="he"`` with
            ``init="torch"`` asks whether PyTorch's default init obeys the He law (it does not in
            families whose depth grows with d).
    Returns:
        A :class:`FamilyResult`; ``.verdicts()`` compares it with the theory.
    """
    from advdim.build import resolve_device
    from advdim.sweep import run_sweep

    sizes_t = _parse_sizes(sizes)
    tgt = GradTarget.parse(target)
    arch = resolve_target(family)
    init_e = Init.parse(init)
    law_e = init_e if law_init is None else Init.parse(law_init)
    if arch.channels is not None and channels is not None and channels != arch.channels:
        raise AdvdimError(f"{arch.text} has {arch.channels} input channel(s), not {channels}")
    channels = arch.channels or channels or 3
    if nets < 2 or inputs < 1 or draws < 1:
        raise AdvdimError(f"need nets >= 2, inputs >= 1, draws >= 1 (got {nets}, {inputs}, {draws})")
    dev = resolve_device(device).type
    if data is not None:  # load and resample here, so that a missing dataset or a bad size fails before any cell
        from advdim.empirical._data import DatasetName

        from advdim.cli_args import check_fits

        data = DatasetName.parse(data).value
        check_fits(pool_bytes(sizes_t, channels), f"the {data} images resampled to sizes {list(sizes_t)}")
        pools = [image_pool(data, data_dir, s) for s in sizes_t]
        if pools[0].shape[1] != channels:
            raise AdvdimError(f"{data} images have {pools[0].shape[1]} channel(s), but channels is {channels}")
    topos = topologies(arch, nets, seed, sizes_t, channels)
    if inputs < 2 and any(batch_statistics(f.spec(sizes_t[0], channels).layers) for f in topos):
        raise AdvdimError("batch norm in batch mode normalises over each net's batch of inputs: --inputs must be "
                          f"at least 2, got {inputs}")
    check_memory(topos, sizes_t, channels, draws, inputs, exact_shortcuts, dtype, dev, data, workers, scheduler,
                 with_theory)
    # the theory's predictions come first too: a refusal of the theory must not discard finished cells
    if with_theory and not arch.random:  # one network: one prediction
        law = predict_topology(arch, sizes_t, channels, law_e, tgt, wide=True)
        laws: list[TopologyLaw | None] = [law] * nets
    else:
        laws = [predict_topology(f, sizes_t, channels, law_e, tgt, inf_draws=RANDOM_INF_DRAWS) for f in topos] \
            if with_theory else [None] * nets
    configs = [cell_config(fam, t, s, channels, draws, inputs, seed, tgt, exact_shortcuts, dtype, dev, data,
                           data_dir, init_e) for t, fam in enumerate(topos) for s in sizes_t]
    results = run_sweep(KIND, configs, run_cell, store, workers=workers, scheduler=scheduler, resume=resume,
                        progress=progress, description=f"simulate {arch.text}")
    iid_inf = inf_prediction_exact(arch, sizes_t, channels, law_e.value)
    n_s = len(sizes_t)
    d = np.array([channels * s * s for s in sizes_t], dtype=np.float64)
    values = {k: np.array([r[k] for r in results], dtype=np.float64).reshape(nets, n_s) for k in Q_KEYS}
    sq = np.array([r["sq2"] for r in results], dtype=np.float64).reshape(nets, n_s)
    has_law = any_law(laws)
    index = np.array([width_index(f, sizes_t, channels) for f in topos]) if has_law else np.zeros(nets)
    # a token readout without a path-sum law (the vit family): its exponent-only law (advdim.theory._tokens)
    token_law = None if has_law or not with_theory else family_law(
        [[f.spec(s, channels) for s in sizes_t] for f in topos])
    return analyse(arch.text, sizes_t, d, values, sq, laws, Units(nets, draws, inputs, channels, seed), tgt,
                   index=index, iid_inf=iid_inf, plant_exponent=plant_exponent, exact_shortcuts=exact_shortcuts,
                   topologies=tuple(f.to_text() for f in topos), data=data, fixed=not arch.random,
                   init=init_e.value, law_init=law_e.value, token_law=token_law)
