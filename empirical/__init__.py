"""advdim.empirical: datasets, attacks, defences and training on real up-sampled images.

The public surface: :mod:`advdim.empirical.attacks` (``fgsm``, ``l2_step``, ``pgd``), the data
loaders (:func:`load`, :class:`Dataset`, :func:`resample`), the defences (:class:`Method`,
:func:`objective`) and training (:class:`TrainConfig`, :func:`train`, :func:`evaluate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from advdim._lazy import lazy_getattr

if TYPE_CHECKING:
    from advdim.empirical import attacks
    from advdim.empirical._data import Dataset, DatasetName, cifar10, fashion_mnist, load, resample, synthetic
    from advdim.empirical._defences import Method, objective
    from advdim.empirical._train import TrainConfig, TrainResult, evaluate, train

_EXPORTS = {
    "attacks": "advdim.empirical.attacks",
    **dict.fromkeys(["Dataset", "DatasetName", "cifar10", "fashion_mnist", "load", "resample", "synthetic"],
                    "advdim.empirical._data"),
    **dict.fromkeys(["Method", "objective"], "advdim.empirical._defences"),
    **dict.fromkeys(["TrainConfig", "TrainResult", "evaluate", "train"], "advdim.empirical._train"),
}
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())

__all__ = [
    "Dataset", "DatasetName", "Method", "TrainConfig", "TrainResult", "attacks", "cifar10", "evaluate",
    "fashion_mnist", "load", "objective", "resample", "synthetic", "train",
]
