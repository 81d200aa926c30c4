# unochat: `make` (= `make firmware`) builds the UNO firmware for the default model; `make test` runs the tests.
# Every target installs what is missing first (tools/setup.sh is idempotent and fast when all is there).

VENV      := .venv
PY        := $(VENV)/bin/python
UNOCHAT   := $(VENV)/bin/unochat
SETUP     := $(VENV)/.setup-done
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

$(SETUP): tools/setup.sh pyproject.toml
	bash tools/setup.sh
	touch $@

setup: $(SETUP)

# export + PlatformIO build + avr-size budget check; PlatformIO rebuilds only what changed
firmware: $(SETUP)
	$(UNOCHAT) build $(MODEL)

$(UNOSIM): tools/unosim/unosim.c $(SETUP)
	$(MAKE) -C tools/unosim

test: $(SETUP) $(UNOSIM)
	$(PY) -m pytest -q

sim: firmware $(UNOSIM)
	$(UNOCHAT) sim --link $(LINK)

chat: firmware $(UNOSIM)
	$(UNOCHAT) chat --sim

bench: firmware $(UNOSIM)
	$(UNOCHAT) bench $(MODEL) --sim --json build/bench.json --plot build/bench.png

model: $(SETUP)
	$(UNOCHAT) train --data $(DATA) --out models/default.pt

flash: firmware
	$(UNOCHAT) flash --port $(PORT)

clean:
	rm -rf build .pio firmware/generated tools/bin
