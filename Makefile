# Two entry points (see README): `make demo` and `make test`. Both are idempotent: a second
# run reuses the virtual environment and the built demo model.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.demi-installed
DEMO   := .demi-build/demo-model
EXAMPLE := model/rope.py

.PHONY: setup demo test tiny clean

setup: $(STAMP)

# torch first, pinned to the local CPU build, so nothing below pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

$(DEMO)/config.json: | $(STAMP)
	$(BIN)/python -m demi.model.scaffold $(DEMO)

demo: $(STAMP) $(DEMO)/config.json
	$(BIN)/demi doctor --model $(DEMO)
	$(BIN)/demi models info $(DEMO)
	$(BIN)/demi eval perplexity --model $(DEMO) $(EXAMPLE)
	$(BIN)/demi generate --model $(DEMO) --prompt "def fibonacci(n):" --max-tokens 24
	$(BIN)/demi explain --model $(DEMO) $(EXAMPLE) --symbol apply_rotary --max-tokens 32 --no-history
	@echo "(the demo model has random weights until the built-in demi-tiny is trained: the text is noise)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The built-in model from scratch (seeded; about 95 minutes on an idle 2-core CPU). Re-running
# resumes from the last checkpoint; when done, the model is copied into model/builtin/demi-tiny.
tiny: $(STAMP)
	$(BIN)/demi train tiny --out .demi-build/demi-tiny-run --ship model/builtin/demi-tiny

clean:
	rm -rf .demi-build
