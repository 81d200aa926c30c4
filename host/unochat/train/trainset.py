"""The pairs a model trains on: the dataset, its charset, the seeded held-out split, augmentation.

Held-out split: `heldout` > 0 holds out that fraction of the pairs (data.dataset.training_split). The
split's seed is fixed on purpose, independent of the training seed, so every model is judged on the same
pairs. The model is still selected by its integer score on its training examples, never by the
held-out pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..data.augment import AugmentConfig, augment_pairs
from ..data.dataset import (
    EOS,
    SHOWN_PER_KIND,
    Dataset,
    Pair,
    build_charset,
    load_dataset,
    refusal_lines,
    training_split,
)
from ..data.features import context_features, query_features, teacher_forced_examples
from ..model.replies import ReplyStore, encode, select_replies
from .config import TrainConfig


def report_problems(dataset: Dataset) -> None:
    """The dataset's summary (pairs, refusals per kind), then the first few refused lines of each kind;
    `unochat data FILE --refused` lists them all."""
    print(dataset.summary())
    for line in refusal_lines(dataset.problems):
        print(line)
    if any(n > SHOWN_PER_KIND for n in dataset.refusals().values()):
        print(f"  (`unochat data {dataset.path} --refused` lists them all)")


class TrainingData(NamedTuple):
    dataset: Dataset
    charset: str
    train_pairs: list[Pair]
    held_pairs: list[Pair]
    store: ReplyStore | None = None  # reply-constrained decoding: the replies the model may give
    given_up: int = 0  # training pairs left out because the store could not hold their reply

    @property
    def reply_limit(self) -> int:
        """The model's reply limit: its longest stored reply, else the dataset's longest reply."""
        if self.store is not None:
            return self.store.longest
        return max(len(p.response) for p in self.dataset.pairs)


def load_training_data(data_path: str | Path, config: TrainConfig, charset: str | None = None) -> TrainingData:
    """The dataset read as the config says (case, transliteration), its charset (or a model's: pairs it
    cannot spell are skipped) and the config's seeded held-out split."""
    heldout = config.heldout
    dataset = load_dataset(data_path, charset=charset[:-1] if charset else None, case=config.case,
                           transliterate=config.transliterate)
    report_problems(dataset)
    # the charset comes from every pair, held-out ones included, so held-out replies stay spellable
    charset = charset or build_charset(dataset.pairs)
    train_pairs, held_pairs = training_split(dataset.pairs, heldout)
    return TrainingData(dataset, charset, train_pairs, held_pairs)


def training_pairs(data: TrainingData, config: TrainConfig) -> list[Pair]:
    """The pairs a model learns from: the training pairs and `config.augment` seeded variants of each."""
    return data.train_pairs + augment_pairs(data.train_pairs, AugmentConfig(copies=config.augment, seed=config.seed))




def with_store(data: TrainingData, config: TrainConfig) -> TrainingData:
    """For reply-constrained decoding (config.decoding == "replies"): the store of the training pairs'
    replies (within config.store_bytes, the replies serving the most pairs per byte), and the training
    pairs it can answer; the rest are given up and counted. Free decoding: the data as it is."""
    if config.decoding != "replies":
        return data
    store = select_replies(data.train_pairs, data.charset, config.store_bytes)
    kept = [p for p in data.train_pairs if p.response in store]
    given_up = len(data.train_pairs) - len(kept)
    print(f"reply store: {len(store):,} replies in {encode(store, data.charset).nbytes:,} B; it answers "
          f"{len(kept):,} of the {len(data.train_pairs):,} training pairs ({given_up:,} given up)")
    return data._replace(train_pairs=kept, store=store, given_up=given_up)


@dataclass(frozen=True)
class Examples:
    """What a model trains on: inputs (uint8 [N, n_inputs]), target symbols [N], the pair each example
    comes from [N], and for reply-constrained decoding the symbols allowed at each (bool [N, symbols])."""

    x: np.ndarray
    y: np.ndarray
    pairs_of: np.ndarray
    allowed: np.ndarray | None = None


def training_examples(pairs: list[Pair], charset: str, config: TrainConfig, store: ReplyStore | None) -> Examples:
    """Free decoding: one example per reply character and EOS. Reply-constrained: only the steps where the
    store leaves a choice (the network runs nowhere else), each with its allowed symbols."""
    spec = config.features
    if store is None:
        x, y = teacher_forced_examples(pairs, charset, spec)
        return Examples(x, y, np.repeat(np.arange(len(pairs)), [len(p.response) + 1 for p in pairs]))
    index = {c: i for i, c in enumerate(charset[:-1])} | {"": len(charset) - 1}
    xs, ys, of, masks = [], [], [], []
    for n, pair in enumerate(pairs):
        q = query_features(pair.query, spec)
        for k, target in enumerate(pair.response + EOS):
            allowed = store.allowed(pair.response[:k])
            if len(allowed) > 1:
                mask = np.zeros(len(charset), dtype=bool)
                mask[[index[c] for c in allowed]] = True
                xs.append(np.concatenate([q, context_features(pair.response[:k], spec)]))
                ys.append(index[target.replace(EOS, "")])
                of.append(n)
                masks.append(mask)
    if not xs:
        raise ValueError("the store leaves no choice anywhere (a single reply): there is nothing to train")
    return Examples(np.stack(xs), np.asarray(ys, dtype=np.int64), np.asarray(of), np.stack(masks))
