# unochat: `make` (= `make firmware`) builds the UNO firmware for the default model; `make test` runs the tests.
# Every target installs what is missing first (tools/setup.sh is idempotent and fast when all is there).

VENV      := .venv
PY        := $(VENV)/bin/python
UNOCHAT   := $(VENV)/bin/unochat
MODEL     ?= models/default.npz
DATA      ?= data/default.txt
PORT      ?= /dev/ttyACM0
LINK      ?= /tmp/unochat-uno
UNOSIM    := tools/bin/unosim

export PLATFORMIO_CORE_DIR := $(CURDIR)/.pio-core
export PLATFORMIO_DISABLE_UPGRADE_CHECK := true
export PLATFORMIO_SETTING_ENABLE_TELEMETRY := no

.PHONY: all firmware setup test sim chat bench model flash clean

all: firmware

# tools/setup.sh checks before it installs (about half a second when all is there), so every
# target runs it rather than trusting a stamp file that cannot see a deleted .pio-core.
setup:
	bash tools/setup.sh

# export + PlatformIO build + avr-size budget check; PlatformIO rebuilds only what changed
firmware: setup
	$(UNOCHAT) build $(MODEL)

$(UNOSIM): tools/unosim/unosim.c
	$(MAKE) -C tools/unosim

test: setup $(UNOSIM)
	$(PY) -m pytest -q

sim: firmware $(UNOSIM)
	$(UNOCHAT) sim --link $(LINK)

chat: firmware $(UNOSIM)
	$(UNOCHAT) chat --sim

bench: firmware $(UNOSIM)
	$(UNOCHAT) bench $(MODEL) --sim --json build/bench.json --plot build/bench.png
	$(UNOCHAT) bench --kernels --json build/kernels.json

model: setup
	$(UNOCHAT) train --data $(DATA) --hidden 160,128,96 --bits 2 --epochs 100 --seed 0 --out models/default.pt

flash: firmware
	$(UNOCHAT) flash --port $(PORT)

clean:
	rm -rf build .pio firmware/generated
	$(MAKE) -C tools/unosim clean
