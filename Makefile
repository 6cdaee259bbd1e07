# Two entry points (see README): `make demo` and `make test`. Both are idempotent: a second
# run reuses the virtual environment.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.demi-installed
EXAMPLE := examples/inventory.py

.PHONY: setup demo test check tiny clean

setup: $(STAMP)

# torch first, pinned to the local CPU build, so nothing below pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

# The main job on the built-in model demi-tiny (shipped in model/builtin/, nothing to download).
demo: $(STAMP)
	$(BIN)/demi doctor
	$(BIN)/demi models info demi-tiny
	$(BIN)/demi eval perplexity --model demi-tiny $(EXAMPLE)
	$(BIN)/demi generate --model demi-tiny --prompt "def is_palindrome(text):" --max-tokens 40
	$(BIN)/demi complete --model demi-tiny $(EXAMPLE) --at 35:12 --no-history
	$(BIN)/demi explain --model demi-tiny $(EXAMPLE) --symbol reserve --max-tokens 48 --no-history

# The VS Code extension's type check runs when npm is here (its test is skipped otherwise). Tools
# the tests drive are installed here as root with apt when missing: zsh and fish (the shell
# completion tests), headless Neovim (the editor
# tests in tests/lsp/test_lsp_editors.py), and Debian's aarch64 cross compiler with qemu-user (the
# ARM kernels, checked under emulation in tests/model/test_native_arm.py), and cmake with a C++
# compiler for the model servers the remote-engine tests talk to: `tests/peers.py install` builds
# llama.cpp's llama-server and installs llama-cpp-python[server] in a venv of its own, once, under
# ~/.cache/demi-peers ($DEMI_PEERS_DIR), from the llama-cpp-python 0.3.36 sdist (a no-op when they are
# there). DEMI_REQUIRE_PEERS=1 makes a missing peer fail its tests instead of skipping them.
test: check
	-command -v npm >/dev/null && cd editors/vscode && npm ci --no-audit --no-fund --loglevel=error
	@missing=""; \
	command -v nvim >/dev/null || missing="$$missing neovim"; \
	command -v aarch64-linux-gnu-gcc >/dev/null || missing="$$missing gcc-aarch64-linux-gnu libc6-dev-arm64-cross"; \
	command -v qemu-aarch64 >/dev/null || missing="$$missing qemu-user"; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v zsh >/dev/null || missing="$$missing zsh"; \
	command -v fish >/dev/null || missing="$$missing fish"; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq $$missing) >/dev/null 2>&1 \
	    || echo "could not install$$missing: the tests that need them skip"; \
	fi
	$(BIN)/python tests/peers.py install
	DEMI_REQUIRE_PEERS=1 $(BIN)/python -m pytest -q

# Lint and format (ruff), types (mypy) and the layers' import contracts (import-linter, see
# pyproject.toml). The static tools read the package through a tree of links laid out as it is
# installed (tools/package_tree.py); mypy's messages name the repository's files.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/package_tree.py >/dev/null
	cd .demi-build/pkg && PYTHONPATH=. ../../$(BIN)/lint-imports ../../pyproject.toml --no-cache
	cd .demi-build/pkg && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p demi 2>&1 \
	  | ../../$(BIN)/python ../../tools/package_tree.py --map; exit $${PIPESTATUS[0]}

# The built-in model from scratch (seeded): 1,800 steps, continued to 3,600, then 1,200 steps on
# the recipe's second data mix (line-shaped FIM holes), as shipped: about 4.5 hours on an idle
# 2-core CPU. Re-running resumes from the last checkpoint; at the end the model is copied into
# model/builtin/demi-tiny.
tiny: $(STAMP)
	$(BIN)/demi train tiny --out .demi-build/demi-tiny-run --steps 1800
	$(BIN)/demi train tiny --out .demi-build/demi-tiny-run --steps 3600
	$(BIN)/demi train tiny --out .demi-build/demi-tiny-run --steps 4800 --ship model/builtin/demi-tiny

clean:
	rm -rf .demi-build
