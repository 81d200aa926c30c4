"""What training, fine-tuning and the pipeline are asked to do: plain settings, no torch.

The command line takes its defaults from these dataclasses (cli/main.py), so each default is written
once, here, and `unochat --help` starts without importing torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..data.dataset import CASES
from ..data.features import FeatureSpec
from ..model import formats
from ..model.intmodel import MAX_WIDTH

DEFAULT_SPARSITY = 0.7  # ternary layers: the share of each row's weights that are 0 (z80ai's model: 74%)
DECODINGS = ("free", "replies")  # model/replies.py: "replies" keeps generation to the stored replies
# Pruning criteria (train/prune.py): l1_std, the default, l1_mean (the original experiment's) and gamma.
CRITERIA = ("l1_std", "l1_mean", "gamma")


@dataclass
class TrainConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 192, 128])
    formats: list[str] = field(default_factory=list)  # one per layer incl. the output; empty: all 1bit
    epochs: int = 150  # measured on tinychat: 100 -> 96.9% TF / 84.9% EM, 150 -> 97.2% / 86.0% (256-192-128)
    warmup_epochs: int = 0  # epochs of blending float -> quantized weights; 0: quantized from the start
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0
    heldout: float = 0.0
    patience: int | None = None  # stop after this many epochs without a better integer TF
    # epochs between integer evaluations; the last epoch is always evaluated. One evaluation (export +
    # reference over 14,814 tinychat examples) costs ~0.37 s inside the loop, about as much as a training
    # epoch of a 256-256-128 model, so every epoch would double the time; fine-tuning can ask for 1.
    eval_every: int = 5
    features: FeatureSpec = field(default_factory=FeatureSpec)
    # seeded query variants per training pair (augment.py); the metrics stay on the real pairs.
    # Measured in README, "Held-out quality".
    augment: int = 0
    # "replies": reply-constrained decoding (model/replies.py), trained where the store branches; "free"
    decoding: str = "free"
    store_bytes: int | None = None  # the reply store's flash budget (None: every training reply)
    case: str = "keep"  # responses as the corpus writes them, or "upper" (z80ai's models); data/dataset.py
    transliterate: bool = False  # letters outside ASCII to their ASCII forms (else such pairs are refused)
    sparsity: float = DEFAULT_SPARSITY  # ternary layers' share of zero weights (model/formats.py)

    def __post_init__(self) -> None:
        self.hidden = [int(h) for h in self.hidden]
        if not self.formats:
            self.formats = ["1bit"] * (len(self.hidden) + 1)
        self.formats = list(self.formats)
        if any(not 1 <= h <= MAX_WIDTH for h in self.hidden):
            raise ValueError(f"hidden layer widths must be 1..{MAX_WIDTH}")
        if len(self.formats) != len(self.hidden) + 1:
            raise ValueError(f"{len(self.hidden) + 1} layers need {len(self.hidden) + 1} formats, got {len(self.formats)}")
        self.formats = formats.parse_formats(self.formats)
        if self.epochs < 1 or self.warmup_epochs < 0 or self.batch_size < 2 or self.eval_every < 1:
            raise ValueError("need epochs >= 1, warmup_epochs >= 0, batch_size >= 2, eval_every >= 1")
        if not 0.0 <= self.heldout < 1.0:
            raise ValueError(f"heldout is a fraction in [0, 1), got {self.heldout}")
        if self.augment < 0:
            raise ValueError(f"augment is a number of variants per pair, got {self.augment}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 epoch, got {self.patience}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity is the share of zero weights in [0, 1), got {self.sparsity}")
        if self.case not in CASES:
            raise ValueError(f"case is one of {', '.join(CASES)}, got {self.case!r}")
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding is one of {', '.join(DECODINGS)}, got {self.decoding!r}")
        if self.store_bytes is not None and (self.store_bytes < 1 or self.decoding != "replies"):
            raise ValueError("a store budget (store_bytes > 0) goes with reply-constrained decoding")

    def to_dict(self) -> dict:
        return asdict(self)  # features becomes a plain dict too

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        # a config saved before `case` existed comes from a model whose replies were upper-cased
        return cls(**{"case": "upper", **d, "features": FeatureSpec(**d["features"])})


@dataclass(frozen=True)
class PairFocus:
    """Loss weights for exact match, where a reply counts only if every character is right.

    Plain cross-entropy spreads a small model's capacity over every character; its errors then fall on
    many pairs one at a time (binary 128-96-64 on tinychat: 958 of 1,327 failing pairs had exactly one
    wrong character). Here each pair's examples get the weight
        floor + (1 - floor) * P^beta / mean(P^beta),   P = the float model's probability of the whole reply,
    recomputed before every epoch: the pairs the model nearly has weigh most, hopeless ones little,
    so the errors gather on fewer pairs. beta = 0 is plain cross-entropy. The best state is then picked
    by whole_pairs_right (EM) instead of TF. Measured in README "The compression pipeline"."""

    beta: float = 0.25
    floor: float = 0.1


@dataclass
class FineTune:
    """How a changed model is trained again (train.fit with these settings; `focus`: PairFocus weights).

    `restarts` more cosine cycles of `restart_epochs` at `restart_lr` follow the first one (warm restarts,
    Loshchilov & Hutter 2017, "SGDR"), each from the best state so far; the best state of all cycles wins.
    A binary model's exact match jumps only at the end of a cosine decay, when the rate nears 0 and the
    signs stop flipping (tinychat, binary 128-96-64: 49.60% after 150 of 400 epochs, 69.97% after 400);
    another cycle gives it another such end (the first restart: 70.47%; README "Results")."""

    epochs: int = 30
    lr: float = 3e-3
    patience: int | None = None
    eval_every: int = 5
    batch_size: int = 256
    seed: int = 0
    focus: PairFocus | None = None
    restarts: int = 0
    restart_epochs: int = 150
    restart_lr: float = 1e-3

    def config(self, parent: TrainConfig, hidden: list[int], layer_formats: list[str]) -> TrainConfig:
        """The parent's config with this fine-tuning's settings, for a model of this shape and formats."""
        return replace(
            parent,
            hidden=hidden,
            formats=layer_formats,
            epochs=self.epochs, warmup_epochs=0, lr=self.lr, patience=self.patience,
            eval_every=self.eval_every, batch_size=self.batch_size, seed=self.seed,
        )


@dataclass
class Recipe:
    """What each variant is. The defaults were measured on tinychat (README, "The compression pipeline")."""

    hidden: list[int] = field(default_factory=lambda: [256, 192, 128])
    bits: str = "2"
    epochs: int = 100
    ratios: list[float] = field(default_factory=lambda: [0.5])
    criterion: str = "l1_std"
    prune: FineTune = field(default_factory=lambda: FineTune(epochs=30, focus=PairFocus()))
    binary_bits: str = "1"
    binary: FineTune = field(default_factory=lambda: FineTune(epochs=400, focus=PairFocus(), restarts=3))
    # half the weights 0, not z80ai's 74%: on tinychat 81.24% EM against 72.91% at 70% (README, "Sparse
    # ternary weights"); on the 2-bit planes either costs the same flash
    ternary_sparsity: float = 0.5
    ternary: FineTune = field(default_factory=lambda: FineTune(epochs=400, focus=PairFocus(), restarts=3))
    best_hidden: list[int] = field(default_factory=lambda: [160, 128, 96])
    best_bits: str = "2"
    best_epochs: int = 100
    lr: float = 3e-3
    batch_size: int = 256
    seed: int = 0
    case: str = "keep"  # how the variants read the corpus (TrainConfig.case, .transliterate)
    transliterate: bool = False

    def __post_init__(self) -> None:
        """Check every setting before anything trains: a bad binary format should not wait for the baseline."""
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown pruning criterion {self.criterion!r}: use one of {', '.join(CRITERIA)}")
        if not self.ratios or any(not 0.0 <= r < 1.0 for r in self.ratios):
            raise ValueError(f"pruning ratios are fractions in [0, 1), got {self.ratios}")
        if len(self.ratios) not in (1, len(self.hidden)):
            raise ValueError(f"{len(self.ratios)} pruning ratios for {len(self.hidden)} hidden layers")
        formats.parse_formats(self.bits, len(self.hidden) + 1)
        formats.parse_formats(self.binary_bits, len(self.hidden) + 1)
        formats.parse_formats(self.best_bits, len(self.best_hidden) + 1)
        if not 0.0 <= self.ternary_sparsity < 1.0:
            raise ValueError(f"the ternary sparsity is the share of zero weights in [0, 1), got {self.ternary_sparsity}")

    def settings(self, variant: str) -> dict:
        """Everything that decides `variant` besides its parent and the data: its part of the resume key."""
        common = {"lr": self.lr, "batch_size": self.batch_size, "seed": self.seed, "case": self.case,
                  "transliterate": self.transliterate}
        return {
            "baseline": lambda: {"hidden": self.hidden, "bits": self.bits, "epochs": self.epochs, **common},
            "best": lambda: {"hidden": self.best_hidden, "bits": self.best_bits, "epochs": self.best_epochs, **common},
            "pruned": lambda: {"ratios": self.ratios, "criterion": self.criterion, "tune": asdict(self.prune)},
            "binary": lambda: {"bits": self.binary_bits, "tune": asdict(self.binary)},
            "ternary": lambda: {"sparsity": self.ternary_sparsity, "tune": asdict(self.ternary)},
        }[variant]()


