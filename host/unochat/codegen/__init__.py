"""codegen: an integer model as C and AVR assembly (Jinja2 templates in the repo's templates/).

kernels (the fast path's loops and their requantization) -> layout (the Plan, buffers, template context)
-> plan (the planner: kernels per layer within a board's budget) -> render (files) ; hostc (the C on the
host, through ctypes). May import: data, model.
"""
