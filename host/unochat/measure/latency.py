"""On-device latency: Timer1 cycle counts of `!t` replies, checked bit for bit against the reference.

    report = measure_latency(client, model, queries)   # client: unochat.device.UnoClient
    print(report.table()); json.dump(report.to_dict(), f)

Figures (all from the firmware's own Timer1 counts, so a real UNO and the virtual one agree):
- step: one generated character (context features + the network + argmax), median over all steps;
- per character, all in: every cycle of every reply (query features and the final EOS step included)
  divided by the characters generated;
- per layer: cycles per network evaluation, from the firmware's per-layer profile.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..board.client import DeviceError, UnoClient
from ..boards import UNO
from ..data.dataset import SAMPLE_QUERIES, load_dataset, normalize_query, recorded_dataset, spread_queries
from ..firmware.size import SizeReport
from ..model import reference
from ..model.intmodel import IntModel
from ..paths import DEFAULT_DATA
from .cycles import cycle_stats, uart_cycles_per_char

SHOWN_MISMATCHES = 5
BENCH_QUERIES = SAMPLE_QUERIES  # real queries a model is timed on (its density was measured on the same)


@dataclass
class Mismatch:
    query: str
    device: str
    reference: str


@dataclass
class LatencyReport:
    model: str
    model_id: str
    shape: list[int]
    formats: list[str]
    f_cpu: int
    queries: int
    chars: int  # characters generated over all queries
    step_cycles_median: float | None  # one generated character (None: no reply had any)
    step_cycles_min: int | None
    step_cycles_max: int | None
    final_step_cycles_median: float | None  # the step that finds EOS (None if every reply hit max_reply)
    query_cycles_median: float  # query features, once per reply
    char_cycles: float | None  # all cycles / characters: query features, final steps, UART writes amortised
    layer_cycles: list[float]  # per network evaluation, per layer
    uart_cycles: float = 0.0  # per character: writing it to the UART as a chat does (`!u`)
    mismatches: list[Mismatch] = field(default_factory=list)
    round_trips: int = 0
    flash_bytes: int | None = None
    sram_bytes: int | None = None  # static .data + .bss
    least_free: int | None = None  # least free SRAM since reset, after the run
    dataset: str | None = None

    def ms(self, cycles: float | None) -> float | None:
        return None if cycles is None else cycles / self.f_cpu * 1e3

    @property
    def stack_bytes(self) -> int | None:
        """Deepest the stack went: what static SRAM and the least free SRAM leave over."""
        if self.sram_bytes is None or self.least_free is None:
            return None
        return UNO.sram - self.sram_bytes - self.least_free

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            step_ms_median=self.ms(self.step_cycles_median),
            char_ms=self.ms(self.char_cycles),
            query_ms_median=self.ms(self.query_cycles_median),
            stack_bytes=self.stack_bytes,
        )
        return d

    def table(self) -> str:
        def row(name: str, cycles: float | None, note: str = "") -> str:
            if cycles is None:
                return f"  {name:<28} {'-':>12} {'-':>10}  {note}".rstrip()
            return f"  {name:<28} {cycles:>12,.0f} {self.ms(cycles):>10.2f}  {note}".rstrip()

        shape = "-".join(str(n) for n in self.shape)
        lines = [
            f"model {self.model} (id {self.model_id}) {shape} [{','.join(self.formats)}]",
            f"{self.queries} queries" + (f" from {self.dataset}" if self.dataset else "")
            + f", {self.chars} characters, {len(self.mismatches)} mismatches with the reference, "
            f"{self.round_trips} round trips",
            f"  {'':<28} {'cycles':>12} {'ms':>10}  (at {self.f_cpu / 1e6:g} MHz)",
            row("step (one character)", self.step_cycles_median,
                f"median; min {self.step_cycles_min:,}, max {self.step_cycles_max:,}" if self.chars else ""),
            row("final step (finds EOS)", self.final_step_cycles_median, "median"),
            row("query features", self.query_cycles_median, "median, once per reply"),
            row("per character, all in", self.char_cycles, "query features, final step, UART amortised"),
            row("UART write (per character)", self.uart_cycles or None, "Serial.write, as a chat writes it"),
        ]
        for i, cycles in enumerate(self.layer_cycles):
            lines.append(row(f"layer {i} ({self.shape[i]}->{self.shape[i + 1]} {self.formats[i]})", cycles,
                             "per network evaluation"))
        memory = []
        if self.flash_bytes is not None and self.sram_bytes is not None:
            memory.append(f"flash {self.flash_bytes:,} B, static SRAM {self.sram_bytes:,} B")
        if self.least_free is not None:
            memory.append(f"least free SRAM {self.least_free:,} B")
        if self.stack_bytes is not None:
            memory.append(f"stack at most {self.stack_bytes:,} B")
        if memory:
            lines.append(", ".join(memory))
        for m in self.mismatches[:SHOWN_MISMATCHES]:
            lines.append(f"MISMATCH {m.query!r}: device {m.device!r}, reference {m.reference!r}")
        if len(self.mismatches) > SHOWN_MISMATCHES:
            lines.append(f"... and {len(self.mismatches) - SHOWN_MISMATCHES} more mismatches")
        return "\n".join(lines)


def check_model(client: UnoClient, model: IntModel) -> dict[str, str]:
    """The device's `!i` fields, after checking that it runs `model` (same model id)."""
    info = client.info()
    want = model.fingerprint()
    if info.get("id") != want:
        raise DeviceError(
            f"{client.port} runs model {info.get('model')!r} (id {info.get('id')}), not {model.name!r} "
            f"(id {want}): build and flash that model (`make firmware flash`), or pass the model the board runs"
        )
    return info


def bench_queries(model: IntModel, n: int) -> tuple[str, list[str]]:
    """(dataset path, n distinct normalized queries spread evenly over it): the model's training data
    if its meta names a file that exists here, else data/default.txt."""
    path = recorded_dataset(model.meta) or DEFAULT_DATA
    return str(path), spread_queries(load_dataset(path, transliterate=True).pairs, n)  # queries only: any case


def measure_latency(
    client: UnoClient,
    model: IntModel,
    queries: list[str],
    sizes: SizeReport | None = None,
    dataset: str | None = None,
) -> LatencyReport:
    """Time `queries` on the device with `!t`, compare every reply with the reference, read `!m`."""
    if not queries:
        raise ValueError("measure_latency needs at least one query")
    trips = client.round_trips
    info = check_model(client, model)
    normalized = [normalize_query(q) for q in queries]
    expected = reference.generate(model, normalized)
    timed = [client.timed_reply(q) for q in normalized]
    uart = uart_cycles_per_char(client, [t.reply for t in timed])
    least_free = client.memory()["least_free"]

    stats = cycle_stats(timed, model, uart)
    return LatencyReport(
        model=model.name,
        model_id=info["id"],
        shape=model.shape,
        formats=model.formats,
        f_cpu=int(info["f_cpu"]),
        queries=len(queries),
        chars=stats.chars,
        step_cycles_median=stats.step_median,
        step_cycles_min=min(stats.char_steps, default=None),
        step_cycles_max=max(stats.char_steps, default=None),
        final_step_cycles_median=stats.final_step_median,
        query_cycles_median=stats.query_median,
        char_cycles=stats.all_in,
        uart_cycles=uart,
        layer_cycles=stats.layers,
        mismatches=[Mismatch(q, t.reply, e) for q, t, e in zip(normalized, timed, expected) if t.reply != e],
        round_trips=client.round_trips - trips,
        flash_bytes=sizes.flash_bytes if sizes else None,
        sram_bytes=sizes.sram_bytes if sizes else None,
        least_free=least_free,
        dataset=dataset,
    )
