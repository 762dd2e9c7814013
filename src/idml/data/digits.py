"""scikit-learn's embedded handwritten digits (1,797 8x8 images), as a 32x32 RGB quick-start set.

No download is needed. Images are scaled from 0..16 to 0..255, upsampled bilinearly to 32x32 and
repeated over three channels so that every CIFAR network runs on them unchanged.

Split (fixed, documented): image ``i`` (in scikit-learn's order) is a test image when
``i % 5 == 0`` (360 test images), otherwise a training image (1,437).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Mean and standard deviation of the upsampled training images, per channel, in [0, 1] units.
DIGITS_MEAN = (0.3052, 0.3052, 0.3052)
DIGITS_STD = (0.3241, 0.3241, 0.3241)
TEST_EVERY = 5


def upsample_digits(small: torch.Tensor) -> torch.Tensor:
    """N x 1 x 8 x 8 ink values in 0..255 (float) -> N x 3 x 32 x 32 uint8: the quick-start images.

    ``idml predict`` prepares digit image files with this same function.
    """
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def load_digits_data() -> dict:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images).float().unsqueeze(1) * (255.0 / 16.0)
    images = upsample_digits(small)
    labels = torch.from_numpy(bunch.target).long()
    is_test = torch.arange(len(labels)) % TEST_EVERY == 0
    return {
        "train": (images[~is_test], labels[~is_test]),
        "test": (images[is_test], labels[is_test]),
        "class_names": [str(d) for d in range(10)],
    }
