# qcompiler: `make demo` and `make test` do all set-up on a fresh machine (python3, pip, gcc, apt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qcompiler-installed
ROOT   := $(shell id -u 2>/dev/null)

.PHONY: install system-deps report-deps bench-deps deploy test demo bench clean

install: $(STAMP)

# The virtual environment, with qcompiler installed editable plus demo and test extras.
# Re-runs only when pyproject.toml changes. Debian's python3 needs python3-venv for `-m venv`.
$(STAMP): pyproject.toml
	@if ! $(PYTHON) -c 'import ensurepip' >/dev/null 2>&1; then \
	  if [ "$(ROOT)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  else echo "error: $(PYTHON) cannot create virtual environments: install Debian package python3-venv"; exit 1; fi; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[demo,test,bench]'
	@touch $@

# Debian packages the ARM presets need: the aarch64 cross compilers (artifacts, C runtime) and
# qemu user emulation (the ARM tests run the artifacts). Installed when running as root;
# otherwise the ARM tests skip, naming the packages.
ARM_PACKAGES := g++-aarch64-linux-gnu qemu-user-static
system-deps:
	@if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then \
	  if [ "$(ROOT)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(ARM_PACKAGES) (cross compiler and emulator for the arm64 presets)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(ARM_PACKAGES) >/dev/null; \
	  else echo "note: missing Debian packages $(ARM_PACKAGES): ARM tests will skip"; fi; fi

# The C runtime (deploy/), built against the headers and libraries in the installed wheels.
deploy: $(STAMP)
	@$(MAKE) --no-print-directory -C deploy PYTHON=$(abspath $(PY))

# Chromium renders the HTML quantization report in its test (tests skip, naming it, without it).
report-deps:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$(ROOT)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (headless, for the HTML report's test)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: missing Debian package chromium: the HTML report test will skip"; fi; fi

test: $(STAMP) system-deps report-deps deploy
	$(PY) -m pytest -q -ra

demo: $(STAMP) deploy
	$(PY) -m qcompiler demo

# Data the benchmarks read: real Fashion-MNIST, the DejaVu fonts text lines are rendered in, and
# espeak-ng, which speaks the zoo's speech model's inputs.
BENCH_PACKAGES := dataset-fashion-mnist fonts-dejavu-core espeak-ng
bench-deps:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] \
	    || ! command -v espeak-ng >/dev/null; then \
	  if [ "$(ROOT)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BENCH_PACKAGES) >/dev/null; \
	  else echo "note: the benchmarks need Debian packages $(BENCH_PACKAGES)"; fi; fi

bench: $(STAMP) bench-deps
	$(PY) benchmarks/bench_zoo.py
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_latency.py
	$(PY) benchmarks/bench_x86.py
	$(PY) benchmarks/bench_accuracy.py
	$(PY) benchmarks/bench_calibration.py
	$(PY) benchmarks/bench_qdq_export.py
	$(PY) benchmarks/bench_fallback_precision.py

clean:
	rm -rf out deploy/build .pytest_cache
