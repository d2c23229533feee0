"""The data: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)."""

from __future__ import annotations

import dataclasses

import numpy as np

TEST_FRACTION = 0.25
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Digits:
    """Pixels scaled from 0..16 to [0, 1] as float32 rows of 64; labels 0..9 as int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits() -> Digits:
    """The digits, split once and for all: a stratified quarter held out for testing."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    x, y = sklearn_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.int64), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return Digits(x_train, y_train, x_test, y_test)
