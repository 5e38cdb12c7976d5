# Two commands do all set-up on a fresh machine:
#   make run   installs everything and serves http://127.0.0.1:5000 on the default model
#   make test  installs everything and runs every test, browser tests included
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.convlens-installed
WEB_SOURCES := $(shell find web/src web/public -type f 2>/dev/null) \
	web/index.html web/compare.html web/package.json web/package-lock.json web/vite.config.ts web/tsconfig.json
MODEL_FILES := models/efficientnet_lite0.onnx models/efficientnet_lite0.pt models/efficientnet_lite0.pt2
# glibc malloc returns big torch buffers to the OS after every batch; keeping them is 5x faster here.
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 100000000000
# ... and one heap for all threads: a job thread's own arena cannot hold a batch's large buffers.
export MALLOC_ARENA_MAX := 1

.PHONY: install python web models browser redis nginx run cluster test lint bench clean

install: python web models

python: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=77'  # tests/test_wheel.py builds the wheel without isolation
	$(BIN)/python -m pip install -q -e '.[test]'
	# torchattacks, the attacks' test oracle, pins requests~=2.25 against our requests>=2.31; it uses only
	# torch, numpy and scipy, so it goes in without its pins.
	$(BIN)/python -m pip install -q --no-deps 'torchattacks>=3.5'
	touch $@

web: web/dist/index.html
web/dist/index.html: $(WEB_SOURCES)
	cd web && npm ci --no-audit --no-fund --loglevel=error && npm run build

models: $(MODEL_FILES)
$(MODEL_FILES) &: $(STAMP)
	$(BIN)/python -m convlens.models.default models

# Debian's Chromium drives the browser tests (Playwright cannot download its own browser here); they look for
# it the same way (convlens.testing.find_chromium): the one CONVLENS_CHROMIUM names, else chromium or
# chromium-browser on the PATH.
browser:
	@test -n "$$CONVLENS_CHROMIUM" || command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

# Debian's redis-server: the Redis job store's tests start one on a free port (tests/redis_fixtures.py).
redis:
	@command -v redis-server >/dev/null || test -x /usr/bin/redis-server || { \
		SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q redis-server; }

# Debian's nginx-light: `make cluster` puts it in front of the web processes (tests/test_cluster_command.py too).
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { \
		SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q nginx-light; }

run: install
	$(BIN)/convlens serve --host 127.0.0.1 --port 5000

# Redis, two web processes behind nginx on http://127.0.0.1:5000 and two workers (convlens.cluster); Ctrl-C stops.
cluster: install redis nginx
	$(BIN)/convlens cluster

test: install browser redis nginx
	$(BIN)/python -m pytest

lint: python web
	$(BIN)/ruff check server plugins tests bench examples
	$(BIN)/ruff format --check server plugins tests bench examples
	cd web && npm run lint

bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) web/node_modules web/dist var $(MODEL_FILES)
