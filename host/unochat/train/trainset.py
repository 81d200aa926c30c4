"""The pairs a model trains on: the dataset, its charset, the seeded held-out split, augmentation.

Held-out split: `heldout` > 0 holds out that fraction of the pairs (data.dataset.training_split). The
split's seed is fixed on purpose, independent of the training seed, so every model is judged on the same
pairs. The model is still selected by its integer score on its training examples, never by the
held-out pairs.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..data.augment import AugmentConfig, augment_pairs
from ..data.dataset import Dataset, Pair, build_charset, load_dataset, training_split
from .config import TrainConfig

SHOWN_PROBLEMS = 5


def report_problems(dataset: Dataset) -> None:
    print(dataset.summary())
    for problem in dataset.problems[:SHOWN_PROBLEMS]:
        print(f"  {problem}")
    if len(dataset.problems) > SHOWN_PROBLEMS:
        print(f"  ... and {len(dataset.problems) - SHOWN_PROBLEMS} more")


class TrainingData(NamedTuple):
    dataset: Dataset
    charset: str
    train_pairs: list[Pair]
    held_pairs: list[Pair]


def load_training_data(data_path: str | Path, heldout: float, charset: str | None = None) -> TrainingData:
    """The dataset, its charset (or a model's: pairs it cannot spell are skipped) and the seeded split."""
    dataset = load_dataset(data_path, charset=charset[:-1] if charset else None)
    report_problems(dataset)
    # the charset comes from every pair, held-out ones included, so held-out replies stay spellable
    charset = charset or build_charset(dataset.pairs)
    train_pairs, held_pairs = training_split(dataset.pairs, heldout)
    return TrainingData(dataset, charset, train_pairs, held_pairs)


def training_pairs(data: TrainingData, config: TrainConfig) -> list[Pair]:
    """The pairs a model learns from: the training pairs and `config.augment` seeded variants of each."""
    return data.train_pairs + augment_pairs(data.train_pairs, AugmentConfig(copies=config.augment, seed=config.seed))


