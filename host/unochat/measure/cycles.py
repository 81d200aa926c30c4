"""Cycle statistics of timed replies (`!t`): what the latency report and the per-part breakdown share.

All figures come from the firmware's own Timer1 counts. "step": one generated character (context
features, the network, argmax); "all in": every cycle of every reply (the query's features and per-reply
work, and the final step that finds EOS) over the characters generated, plus the UART writes (`!u`).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..board.client import TimedReply, UnoClient
from ..data.dataset import MAX_QUERY
from ..model import reference
from ..model.intmodel import IntModel


def steps_with_network(timed: TimedReply, model: IntModel) -> int:
    """Steps of a timed reply that ran the network (and the context features), by the spec's rule."""
    return reference.network_steps(model, timed.reply)


def uart_cycles_per_char(client: UnoClient, replies: list[str]) -> float:
    """Cycles the firmware spends per character writing replies to the UART as a chat does (`!u`): `!t`
    times the model alone. `!u` takes a line as the line editor keeps it (at most MAX_QUERY characters, a run
    of spaces folded to one), so longer replies go in pieces and runs of spaces are folded first. 0.0 if no
    reply has a character."""
    pieces = [piece for r in replies for start in range(0, len(r), MAX_QUERY)
              if (piece := " ".join(r[start:start + MAX_QUERY].split()))]
    chars = sum(len(p) for p in pieces)
    return sum(client.uart_cycles(p) for p in pieces) / chars if chars else 0.0


@dataclass(frozen=True)
class CycleStats:
    chars: int  # characters generated over all replies
    steps: int  # every step, the final ones included
    evaluations: int  # steps that ran the network
    char_steps: list[int]  # the steps that generated a character
    final_steps: list[int]  # the steps that found EOS (not those that stopped at the length limit)
    query_median: float  # the query's features and per-reply work, once per reply
    all_in: float | None  # every cycle over the characters, UART writes included (None: no character)
    layers: list[float]  # per network evaluation, per layer
    ctx: float  # per network evaluation: the context features
    argmax: float  # per network evaluation

    @property
    def step_median(self) -> float | None:
        return statistics.median(self.char_steps) if self.char_steps else None

    @property
    def final_step_median(self) -> float | None:
        return statistics.median(self.final_steps) if self.final_steps else None


def cycle_stats(timed: list[TimedReply], model: IntModel, uart: float = 0.0) -> CycleStats:
    """The statistics of these timed replies of `model`; `uart`: cycles per character of the UART writes."""
    max_reply, n_layers = model.max_reply, len(model.layers)
    evaluations = sum(steps_with_network(t, model) for t in timed)
    per_evaluation = max(evaluations, 1)
    chars = sum(t.n for t in timed)
    return CycleStats(
        chars=chars,
        steps=sum(len(t.steps) for t in timed),
        evaluations=evaluations,
        char_steps=[c for t in timed for c in t.steps[: t.n]],
        final_steps=[t.steps[-1] for t in timed if t.n < max_reply],
        query_median=statistics.median(t.query_cycles for t in timed),
        all_in=sum(t.total_cycles for t in timed) / chars + uart if chars else None,
        layers=[sum(t.layer_cycles[i] for t in timed) / per_evaluation for i in range(n_layers)],
        ctx=sum(t.ctx_cycles for t in timed) / per_evaluation,
        argmax=sum(t.argmax_cycles for t in timed) / per_evaluation,
    )
