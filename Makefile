# collab: `make run` serves the editor and server on http://127.0.0.1:8080; `make test` runs
# the whole suite. Both set up what they need first (a virtualenv, the npm packages, the bundle).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HAVE_NPM := $(shell command -v npm >/dev/null 2>&1 && echo yes)
WEB_SOURCES := $(shell find web -path web/node_modules -prune -o -path web/dist -prune -o -type f -print 2>/dev/null)

.PHONY: run test setup web js-test-deps lint docs bench profile clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

setup: $(STAMP)

web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund

web/dist/index.html: web/node_modules/.package-lock.json $(WEB_SOURCES)
	cd web && npm run build

web:
	@if [ ! -f web/package.json ]; then echo "collab: no web/ editor in this checkout"; \
	elif [ "$(HAVE_NPM)" != yes ]; then \
	  echo "collab: Node.js/npm not found, so the editor page cannot be built;"; \
	  echo "        the server still runs and any Yjs client can use ws://127.0.0.1:8080/ws/<room>."; \
	else $(MAKE) --no-print-directory web/dist/index.html; fi

tests/js/node_modules/.package-lock.json: tests/js/package-lock.json
	npm ci --no-audit --no-fund --prefix tests/js

bench/loadgen/node_modules/.package-lock.json: bench/loadgen/package-lock.json
	npm ci --no-audit --no-fund --prefix bench/loadgen

js-test-deps:
	@if [ -f tests/js/package-lock.json ] && [ "$(HAVE_NPM)" = yes ]; then \
	  $(MAKE) --no-print-directory tests/js/node_modules/.package-lock.json \
	    bench/loadgen/node_modules/.package-lock.json; fi

run: $(STAMP)
	@$(MAKE) --no-print-directory web || echo "collab: the editor build failed (see above); starting the server anyway"
	$(BIN)/collab serve

test: $(STAMP) web js-test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

docs: $(STAMP)
	$(BIN)/python -c 'from collab.config import reference; print(reference(), end="")' > docs/configuration.md

lint: $(STAMP)
	$(BIN)/ruff check collab tests $(wildcard bench)

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

profile: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/profile.py $(PROFILE_ARGS)

clean:
	rm -rf $(VENV) web/node_modules web/dist tests/js/node_modules
