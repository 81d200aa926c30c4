"""measure: what a model is worth on the board, measured.

cycles (statistics of timed replies) -> latency (on-device timing, checked against the reference) ->
bench (quality, flash, SRAM, latency per model) ; kernels (the kernel micro-benchmark), breakdown (a
generated character per part). May import: data, model, train, codegen, firmware, board.
"""
