"""Render an integer model into C (templates/*.j2 -> firmware/generated/).

Two kernel paths (codegen/layout.py KERNEL_PATHS):
- "c": plain C dot products over row-major weights (templates/layers_c.c.j2): the readable reference.
- "fast" (default): AVR assembly inner loops and requantization (templates/unochat_kernels.S.j2) over
  weights stored in blocks of output neurons, driven by C (templates/layers_fast.c.j2), as the planner
  (codegen/plan.py) chooses them. On the host the same C runs with plain-C stand-ins for the assembly,
  so its layout and arithmetic are tested there too.
Rendering reads only the model: never data, never inference.
"""
from __future__ import annotations

from pathlib import Path

from ..model.intmodel import IntModel
from ..paths import GENERATED
from .layout import ASSEMBLY, HEADER, SOURCE, Plan, environment, layer_context, template_context
from .plan import plan_for


def render(
    model: IntModel,
    out_dir: Path = GENERATED,
    kernels: str = "fast",
    density: list[float] | None = None,
    plan: Plan | None = None,
    profile_requant: bool = False,
) -> list[Path]:
    """Write the generated C (and, for the fast kernels, assembly) for `model` into out_dir and return
    the files written. `density` (nonzero fraction of each layer's inputs) or a whole `plan` override
    what the fast path would choose (codegen/plan.py). profile_requant times the fast path's
    requantization apart from the layers (`!t` rq=), at the cost of two profile calls a block."""
    model.validate()
    if plan is None or kernels == "c":
        plan = plan_for(model, kernels, density)
    layers = [layer_context(model, i, k, plan) for i, k in enumerate(plan.kernels)]
    context = template_context(model, plan, kernels, layers, profile_requant)
    env = environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [HEADER, SOURCE] + ([ASSEMBLY] if context["asm_kernels"] else [])
    # a stale kernel file from an earlier fast export would be compiled into a C-path build
    (out_dir / ASSEMBLY).unlink(missing_ok=True)
    written = []
    for name in outputs:
        path = out_dir / name
        path.write_text(env.get_template(name + ".j2").render(**context))
        written.append(path)
    return written
