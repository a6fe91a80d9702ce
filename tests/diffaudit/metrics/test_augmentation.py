"""The pure part of the augmentation experiment: classifier, accuracy accounting, top-up bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.metrics.augmentation import (
    choose_additions,
    class_counts,
    confusion_matrix,
    find_minority,
    keep_fraction_of_class,
    overall_accuracy,
    per_class_accuracy,
    spread,
    top_up_count,
)
from diffaudit.models.classifier import classifier_pixels, predict, train_classifier

CPU = torch.device("cpu")


def bright_dark_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: dark 12x12 images, class 1: bright ones, with noise; trivially separable."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels == 1, 200, 40)[:, None, None, None]
    images = np.clip(base + rng.integers(-30, 31, size=(n, 12, 12, 1)), 0, 255).astype(np.uint8)
    return images, labels


def test_separable_set_is_classified_perfectly() -> None:
    train_images, train_labels = bright_dark_set(128, seed=0)
    test_images, test_labels = bright_dark_set(40, seed=1)
    model = train_classifier(classifier_pixels(train_images), train_labels, 2, epochs=4, seed=0, device=CPU)
    confusion = confusion_matrix(test_labels, predict(model, classifier_pixels(test_images), CPU), 2)
    assert overall_accuracy(confusion) == 1.0
    assert per_class_accuracy(confusion).tolist() == [1.0, 1.0]
    assert confusion.tolist() == [[20, 0], [0, 20]]


def test_training_is_seeded_and_reports_epochs() -> None:
    images, labels = bright_dark_set(64, seed=0)
    pixels = classifier_pixels(images)
    epochs_seen: list[int] = []
    first = train_classifier(pixels, labels, 2, epochs=2, seed=3, device=CPU, on_epoch=epochs_seen.append)
    second = train_classifier(pixels, labels, 2, epochs=2, seed=3, device=CPU)
    other = train_classifier(pixels, labels, 2, epochs=2, seed=4, device=CPU)
    assert epochs_seen == [1, 2]
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters(), strict=True))


def test_classifier_pixels_downscales_large_images_only() -> None:
    small = np.full((3, 16, 16, 1), 7, dtype=np.uint8)
    assert classifier_pixels(small).shape == (3, 1, 16, 16)
    large = np.full((2, 64, 48, 3), 200, dtype=np.uint8)
    out = classifier_pixels(large)
    assert out.shape == (2, 3, 32, 24) and out.dtype == torch.uint8
    assert torch.all(out == 200)  # a constant image stays constant


def test_per_class_accounting_on_a_hand_made_confusion() -> None:
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 1, 0, 1, 1, 0, 2, 2, 1])
    confusion = confusion_matrix(true, predicted, 4)
    assert confusion.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 1, 2, 0], [0, 0, 0, 0]]
    accuracy = per_class_accuracy(confusion)
    assert accuracy[:3].tolist() == pytest.approx([2 / 3, 1.0, 0.5])
    assert np.isnan(accuracy[3])  # no test image of class 3
    assert overall_accuracy(confusion) == pytest.approx(6 / 9)


def test_paper_table_2_overall_is_the_test_weighted_mean() -> None:
    # Table 2, OI column: NORMAL 102/234 = 0.4359, PNEUMONIA 389/390 = 0.9974, OVERALL 491/624 = 0.7869
    confusion = np.array([[102, 132], [1, 389]])
    assert per_class_accuracy(confusion).round(4).tolist() == [0.4359, 0.9974]
    assert round(overall_accuracy(confusion), 4) == 0.7869


def test_spread_over_seeds() -> None:
    three = spread([0.5, 0.7, 0.9])
    assert (three["mean"], three["std"]) == pytest.approx((0.7, 0.2))
    assert three["per_seed"] == [0.5, 0.7, 0.9]
    assert spread([0.25]) == {"mean": 0.25, "std": 0.0, "per_seed": [0.25]}


def test_keep_fraction_of_class_keeps_exactly_that_share() -> None:
    labels = np.repeat([0, 1, 2], [10, 8, 10])
    keep = keep_fraction_of_class(labels, 1, 0.25, seed=0)
    assert class_counts(labels[keep], 3).tolist() == [10, 2, 10]
    assert np.all(keep[labels != 1])
    np.testing.assert_array_equal(keep, keep_fraction_of_class(labels, 1, 0.25, seed=0))
    assert class_counts(labels[keep_fraction_of_class(labels, 1, 0.01, seed=0)], 3).tolist() == [10, 1, 10]
    with pytest.raises(ValueError, match="class 3 has no training images"):
        keep_fraction_of_class(labels, 3, 0.5, seed=0)


def test_minority_and_top_up_counts() -> None:
    assert find_minority(np.array([10, 2, 10]), 0.5) == 1
    assert find_minority(np.array([10, 9, 10]), 0.5) is None
    assert top_up_count(np.array([10, 2, 10]), 1) == 8
    assert top_up_count(np.array([5, 1, 7, 3]), 1) == 6  # matched to the largest other class
    assert top_up_count(np.array([5, 9]), 1) == 0  # already the largest: nothing to add


def test_choose_additions_takes_equal_numbers_of_ds_and_ordinary_samples_per_class() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2])
    outside = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1], dtype=bool)

    top_up = choose_additions(labels, outside, np.array([0, 5, 0]), seed=0)
    assert top_up.added.tolist() == [0, 2, 0]  # class 1 has only 2 DS
    assert sorted(top_up.diverse.tolist()) == [3, 4]
    assert len(top_up.generated) == 2 and set(top_up.generated.tolist()) <= {5, 6, 7}

    spread_out = choose_additions(labels, outside, np.array([1, 1, 1]), seed=0)
    assert spread_out.added.tolist() == [1, 1, 0]  # class 2 has a DS but no ordinary sample to match it
    assert spread_out.diverse.tolist()[0] == 0 and spread_out.generated.tolist()[0] in (1, 2)
    assert np.all(outside[spread_out.diverse]) and not np.any(outside[spread_out.generated])
    assert class_counts(labels[spread_out.diverse], 3).tolist() == [1, 1, 0]
    assert class_counts(labels[spread_out.generated], 3).tolist() == [1, 1, 0]
