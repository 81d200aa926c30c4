# unochat: `make` (= `make firmware`) builds the UNO firmware for the default model; `make test` runs the tests.
# BOARD=nano|nano-old|mega2560 builds, simulates and flashes for another board (host/unochat/boards.py).
# Every target installs what is missing first (tools/setup.sh is idempotent and fast when all is there).

VENV      := .venv
PY        := $(VENV)/bin/python
UNOCHAT   := $(VENV)/bin/unochat
MODEL     ?= models/default.npz
DATA      ?= data/default.txt
PORT      ?= /dev/ttyACM0
BOARD     ?= uno
LINK      ?= /tmp/unochat-uno
UNOSIM    := tools/bin/unosim
# The z80ai tinychat data, when the shared checkout sits beside this repo: `make bench` adds its pipeline.
TINYCHAT  ?= ../shared/z80ai/tinychat/training-data.txt.gz
ifneq ($(wildcard $(TINYCHAT)),)
TINYCHAT_PIPELINE := build/pipeline/tinychat
endif
# z80ai's own tinychat model, imported unmodified (README "Sparse ternary weights")
Z80AI_MODEL ?= ../shared/z80ai/tinychat/model.npz
ifneq ($(wildcard $(Z80AI_MODEL)),)
Z80AI_STOCK := build/z80ai/stock.npz
endif
# The held-out twins (heldout/ beside each variant) give the benchmark's held-out figures.
PIPELINE  := $(UNOCHAT) pipeline --heldout 0.1

export PLATFORMIO_CORE_DIR := $(CURDIR)/.pio-core
export PLATFORMIO_DISABLE_UPGRADE_CHECK := true
export PLATFORMIO_SETTING_ENABLE_TELEMETRY := no

.PHONY: all firmware setup test sim chat bench model flash library clean

all: firmware

# tools/setup.sh checks before it installs (about half a second when all is there), so every
# target runs it rather than trusting a stamp file that cannot see a deleted .pio-core.
setup:
	bash tools/setup.sh

# export + PlatformIO build + avr-size budget check; PlatformIO rebuilds only what changed
firmware: setup
	$(UNOCHAT) build $(MODEL) --board $(BOARD)

$(UNOSIM): tools/unosim/unosim.c
	$(MAKE) -C tools/unosim

test: setup $(UNOSIM)
	$(PY) -m pytest -q

sim: firmware $(UNOSIM)
	$(UNOCHAT) sim --link $(LINK) --board $(BOARD)

chat: firmware $(UNOSIM)
	$(UNOCHAT) chat --sim --board $(BOARD)

# The model as an Arduino library for the IDE (README "Use it in your own sketch")
library: setup
	$(UNOCHAT) export $(MODEL) --arduino-library build/arduino --board $(BOARD)

# ChatterBot's English corpus: the PyPI package chatterbot-corpus (data only; --no-deps: it pins an old
# PyYAML), installed into the venv by the bench, never vendored. Without PyPI its row is skipped.
# The recipe: README "Real corpora" (under a minute of training on 2 cores).
CHATTERBOT_MODEL  := build/chatterbot/replies.npz
CHATTERBOT_RECIPE := --hidden 128,96 --bits 1 --epochs 300 --context-buckets 64 --decoding replies --store-bytes fit

# The benchmark of the default model on $(DATA), when the tinychat data is there of the tinychat
# pipeline's variants (baseline, pruned, binary, best; upper-case, as z80ai's models), and of the
# ChatterBot model (below). The pipeline is resumable: a variant already made by the same recipe is
# skipped, and the ChatterBot model is made once, so only the first `make bench` trains (about 20
# minutes on 2 cores, README "Results"); later runs only build, measure and time.
bench: setup $(UNOSIM) $(CHATTERBOT_MODEL) $(Z80AI_STOCK)
ifdef TINYCHAT_PIPELINE
	$(PIPELINE) --variants baseline,pruned,binary,ternary,best --data $(TINYCHAT) --out-dir $(TINYCHAT_PIPELINE) --no-build --case upper
endif
	$(UNOCHAT) bench $(MODEL) $(TINYCHAT_PIPELINE) $(Z80AI_STOCK) $(wildcard $(CHATTERBOT_MODEL)) --json build/bench.json --plot build/bench.png
ifdef TINYCHAT_PIPELINE
	$(UNOCHAT) bench --board mega2560 $(TINYCHAT_PIPELINE)/baseline.npz $(Z80AI_STOCK) --json build/bench-mega2560.json
endif
	$(UNOCHAT) bench --kernels --json build/kernels.json

ifdef Z80AI_STOCK
$(Z80AI_STOCK): $(Z80AI_MODEL)
	$(UNOCHAT) import-z80ai $(Z80AI_MODEL) --out $@ --data $(TINYCHAT)
endif

$(CHATTERBOT_MODEL):
	@if $(PY) -m pip install --no-deps --quiet chatterbot-corpus==1.3.3; then \
	  $(UNOCHAT) train --data "$$($(PY) -c 'import chatterbot_corpus, pathlib; print(pathlib.Path(chatterbot_corpus.__file__).parent / "data" / "english")')" \
	    $(CHATTERBOT_RECIPE) --out $(@:.npz=.pt); \
	else echo "bench: chatterbot-corpus could not be installed from PyPI: the ChatterBot row is skipped"; fi

# The default model: the pipeline's `best` variant on $(DATA) (and its held-out twin, for the held-out
# figures), exported to models/default.pt + .npz and models/heldout/ (about 8 minutes). Only `best`: on
# tinychat it is the variant that fits with the highest EM, and the whole pipeline on this data (4x
# tinychat's training examples) would take several times tinychat's 16 minutes.
# SEARCH=30m (or 2h, or 90s): the best model a search of that long finds for $(BOARD) instead (README
# "Finding the best model"); a study of the same data and board resumes where the last one stopped.
model: setup
ifdef SEARCH
	$(UNOCHAT) search --data $(DATA) --board $(BOARD) --time $(SEARCH) --export-best models/default
else
	$(PIPELINE) --variants best --data $(DATA) --out-dir build/pipeline/default --export-best models/default.pt
endif

flash: firmware
	$(UNOCHAT) flash --port $(PORT) --board $(BOARD)

clean:
	rm -rf build .pio firmware/generated
	$(MAKE) -C tools/unosim clean
