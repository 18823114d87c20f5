# ec2-spot-forecast: `make run` installs, trains and calibrates if the store has no model, and
# serves; `make test` installs and runs the tests.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL_NAME ?= spot_lstm
HOST ?= 127.0.0.1
PORT ?= 3000
# The BentoML model store; kept outside the project folder so `bentoml build` never packs it.
BENTOML_HOME ?= $(HOME)/bentoml
export BENTOML_HOME
# TensorFlow's C++ start-up notices (oneDNN, CPU features) are noise here; errors still show.
TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_CPP_MIN_LOG_LEVEL
# BentoML records an OpenTelemetry span per request even with no trace exporter configured, which
# costs about a fifth of the server's time per forecast. Set OTEL_SDK_DISABLED=false to trace.
OTEL_SDK_DISABLED ?= true
export OTEL_SDK_DISABLED

.PHONY: install install-evaluate model run test build clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e ".[test]"
	touch $@

# The AutoETS baseline of `spot-forecast evaluate`. statsforecast declares pandas<3 but runs on
# the locked pandas 3, so it is installed first and the locked pandas put back after it.
install-evaluate: install
	$(BIN)/pip install --quiet statsforecast==2.1.1
	$(BIN)/pip install --quiet -c requirements.lock pandas
	@echo "pip's note that statsforecast requires pandas<3 is expected: AutoETS runs on pandas 3."

model: install
	@$(BIN)/bentoml models get $(MODEL_NAME):latest > /dev/null 2>&1 \
		&& echo "Using $(MODEL_NAME):latest from $(BENTOML_HOME)" \
		|| ($(BIN)/python train.py && $(BIN)/spot-forecast calibrate --model $(MODEL_NAME):latest)

run: model
	$(BIN)/bentoml serve service:SpotForecast --host $(HOST) --port $(PORT)

test: install
	$(BIN)/pytest

build: model
	$(BIN)/bentoml build

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
