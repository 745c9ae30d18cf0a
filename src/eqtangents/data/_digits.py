"""The 8x8 handwritten digits (UCI, CC BY 4.0; see LICENSE.md beside this file)."""

from __future__ import annotations

from importlib import resources

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Loads the bundled 8x8 handwritten digits.

    **Returns:**

    `(images, labels)`: `images` of shape `(1797, 1, 8, 8)` (channels first) as
    `float32` pixel intensities in `[0, 1]`, and integer `labels` in `0..9` of
    shape `(1797,)`.
    """
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f:
        data = np.load(f)
        images, labels = data["images"], data["labels"]
    images = (images.astype(np.float32) / 16.0)[:, None]
    return images, labels.astype(np.int64)
