"""Linear probe: logistic regression (scikit-learn) on frozen image features of a class-folder set.

The samples and their classes come from the same catalog resolution as zero-shot (unknown labels are
refused). Without a separate test folder the set is split by patient (the shards' keyed patient hash,
else study, else sample uid), so no patient is on both sides. The inverse regularization C is chosen
on a patient-split validation part of the training side (balanced accuracy), then the probe is refit
on the whole training side. Figures carry n per class on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unimed.errors import UserError
from unimed.train.catalog import EvalSetSpec
from unimed.train.targets import SetTargets, collect_targets
from unimed.train.transform import EvalTransform
from unimed.train.zeroshot import image_features, iter_image_batches, multiclass_metrics

__all__ = ["group_split", "linear_probe", "C_GRID"]

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def group_split(groups: Sequence[str], fraction: float, salt: str) -> np.ndarray:
    """A boolean mask: True for the samples whose group hashes into the ``fraction`` side."""
    import xxhash

    cut = int(fraction * 10_000)
    return np.array([xxhash.xxh64_intdigest(f"{salt}:{g}") % 10_000 < cut for g in groups], dtype=bool)


def _features(model, folder: str, targets: SetTargets, transform: EvalTransform, batch_size: int) -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats, _ = image_features(model, iter_image_batches(folder, targets.positions, transform, batch_size))
    finally:
        model.train(was_training)
    return feats.cpu().numpy().astype(np.float64)


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)


def _choose_c(x: np.ndarray, y: np.ndarray, groups: list[str], k: int, seed: int) -> tuple[float, str]:
    """The C of the grid with the best validation balanced accuracy (patient-split), and how it was chosen."""
    val = group_split(groups, 0.2, f"probe-val-{seed}")
    if len(set(y[~val])) < k or len(set(y[val])) < 2:
        return 1.0, "C=1 (too few patients to hold out a validation part)"
    best, best_c = -1.0, 1.0
    for c in C_GRID:
        pred = _fit(x[~val], y[~val], c, seed).predict(x[val])
        score = np.mean([np.mean(pred[y[val] == i] == i) for i in set(y[val])])
        if score > best:
            best, best_c = score, c
    return best_c, f"C={best_c:g} (best balanced top-1 {best:.3f} on {int(val.sum())} validation samples)"


def linear_probe(
    model,
    folder: str,
    spec: EvalSetSpec,
    transform: EvalTransform,
    test_folder: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 64,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Test metrics of a logistic-regression probe on frozen features (see the module docstring)."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UserError("the linear probe needs scikit-learn: pip install scikit-learn") from None
    if spec.task != "multiclass":
        raise UserError(f"set {spec.name!r} is multi-label; the linear probe takes single-label (class-folder) sets")
    train = collect_targets(folder, spec, max_samples)
    x = _features(model, folder, train, transform, batch_size)
    y = train.array()
    if test_folder:
        test = collect_targets(test_folder, spec, max_samples)
        xt, yt = _features(model, test_folder, test, transform, batch_size), test.array()
        split = f"test folder ({test.total} samples)"
        groups = train.groups
        left_out = {"train": dict(train.left_out), "test": dict(test.left_out)}
    else:
        is_test = group_split(train.groups, test_fraction, f"probe-test-{seed}")
        xt, yt = x[is_test], y[is_test]
        x, y = x[~is_test], y[~is_test]
        groups = [g for g, t in zip(train.groups, is_test) if not t]
        split = (
            f"by patient: {int(is_test.sum())} of {len(is_test)} samples "
            f"({len(set(np.asarray(train.groups)[is_test]))} of {len(set(train.groups))} patients) for testing"
        )
        left_out = dict(train.left_out)
    k = len(spec.classes)
    missing = [spec.classes[i] for i in range(k) if not (y == i).any()]
    if missing:
        raise UserError(
            f"{folder}: no training sample for classes {missing} of set {spec.name!r} ({split}); "
            "give more data or a --test folder"
        )
    if len(yt) == 0:
        raise UserError(f"{folder}: no test sample ({split}); give a --test folder or more patients")
    c, how = _choose_c(x, y, groups, k, seed)
    clf = _fit(x, y, c, seed)
    probs = np.zeros((len(yt), k))
    probs[:, clf.classes_] = clf.predict_proba(xt)
    out = multiclass_metrics(probs, yt, spec.classes, spec.binary)
    out.update(
        {
            "train_per_class_n": {cl: int((y == i).sum()) for i, cl in enumerate(spec.classes)},
            "split": split,
            "C": c,
            "C_choice": how,
            "left_out": left_out,
            "features": int(x.shape[1]),
        }
    )
    return out
