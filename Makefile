# Two commands on a fresh machine: `make dataset` and `make test`. Every target creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
OUT ?= out/m-beir-cot
MBEIR_ROOT ?=
CKPT ?= out/trace-tiny
BENCH_OUT ?= out/bench
REPO ?=
STAMP := $(VENV)/.installed-$(shell cat setup.py constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup dataset test lint train evaluate bench bench-eval bench-teacher bench-pipeline chaos publish publish-model serve clean

setup: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## Build M-BEIR-CoT (embedded sample + offline reference teacher unless MBEIR_ROOT / TEACHER_BASE_URL are set).
dataset: $(STAMP)
	$(PYTHON) -m pipeline.make_dataset --output_dir $(OUT) $(if $(MBEIR_ROOT),--mbeir_root $(MBEIR_ROOT),) $(ARGS)

test: $(STAMP)
	$(PYTHON) -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

## Train the tiny TRACE model on the `make dataset` output, on CPU.
train: $(STAMP)
	test -f $(OUT)/manifest.json || $(MAKE) dataset OUT=$(OUT)
	$(PYTHON) -m trainer.train --data $(OUT) --mbeir_root $(dir $(abspath $(OUT)))mbeir-sample --model tiny --output_dir $(CKPT) $(ARGS)

## The whole chain on the sample: dataset -> train -> evaluate -> bench per pair -> the paper's two throughput
## workloads (PAPER.md §4: 96 % and 38 % of queries bypass reasoning) as mixes of BENCH_QUERIES queries.
BENCH_QUERIES ?= 1000
bench: $(STAMP)
	test -f $(CKPT)/trace_config.json || $(MAKE) train OUT=$(OUT) CKPT=$(CKPT)
	$(PYTHON) -m trainer.evaluate --mbeir_root $(dir $(abspath $(OUT)))mbeir-sample --checkpoint $(CKPT) --split test --pool both --output_dir $(BENCH_OUT)/eval
	$(PYTHON) -m trainer.bench --mbeir_root $(dir $(abspath $(OUT)))mbeir-sample --checkpoint $(CKPT) --output_dir $(BENCH_OUT)/bench
	for mix in bypass96 bypass38; do \
	  $(PYTHON) -m trainer.bench --mbeir_root $(dir $(abspath $(OUT)))mbeir-sample --checkpoint $(CKPT) --mix $$mix --queries $(BENCH_QUERIES) --repeats 5 --output_dir $(BENCH_OUT)/mix-$$mix || exit 1; \
	done

## Serve the checkpoint CKPT (a folder or a Hub id) as an OpenAI-compatible embeddings endpoint on
## 127.0.0.1:8000 (README, Serving); ARGS adds flags, e.g. ARGS="--port 9000 --api_key_env TRACE_API_KEY".
serve: $(STAMP)
	$(PYTHON) -m trainer.serve --checkpoint $(CKPT) $(ARGS)

## Evaluation benchmark: a synthetic M-BEIR-format pool of EVAL_CANDIDATES M-BEIR-sized images, tiny model, CPU;
## candidates/s with 1 and 2 ranks (torchrun, gloo, 1 thread each) and --num_workers 0 vs 1, data wait, peak RSS.
EVAL_CANDIDATES ?= 2048
bench-eval: $(STAMP)
	mkdir -p $(BENCH_OUT)
	$(PYTHON) scripts/bench_eval.py --candidates $(EVAL_CANDIDATES) --repeats 2 --json $(BENCH_OUT)/eval.json

bench-teacher: $(STAMP)
	$(PYTHON) scripts/bench_teacher.py --json $(BENCH_OUT)/teacher.json

## Pipeline benchmark on synthetic trees with M-BEIR-sized images: a --reasoning_only run of REASONING_SIZES
## queries (each its own text and image: ~2 teacher requests per query) against the reference teacher at 100 ms,
## 256 in flight, plus the direct-row CPU check; then dry runs at DRY_SIZES (memory must stay flat). With
## CURATOR_VS=path/to/bench-peers/curator_vs.sh, Curator is measured against the same server in the same run.
REASONING_SIZES ?= 20000
DRY_SIZES ?= 50000,200000
CURATOR_VS ?=
bench-pipeline: $(STAMP)
	mkdir -p $(BENCH_OUT)
	$(PYTHON) scripts/bench_pipeline.py --reasoning_only --sizes $(REASONING_SIZES) --latency_ms 100 \
		--max_in_flight 256 --teacher_process on $(if $(CURATOR_VS),--curator $(CURATOR_VS),) --json $(BENCH_OUT)/pipeline.json
	$(PYTHON) scripts/bench_pipeline.py --sizes $(DRY_SIZES) --dry_run --direct_sizes "" --json $(BENCH_OUT)/pipeline-dry.json

## Kill the pipeline with SIGKILL three times against a faulty teacher; compare with an undisturbed run.
chaos: $(STAMP)
	mkdir -p $(BENCH_OUT)
	$(PYTHON) scripts/chaos_run.py --json $(BENCH_OUT)/chaos.json

## Upload OUT to the Hugging Face Hub as dataset REPO (token from HF_TOKEN).
publish: $(STAMP)
	test -n "$(REPO)" || (echo "usage: make publish REPO=user/name [OUT=folder]" && exit 2)
	$(PYTHON) -m pipeline.publish --repo $(REPO) --output_dir $(OUT) $(ARGS)

## Upload the checkpoint CKPT to the Hugging Face Hub as model REPO with a model card (token from HF_TOKEN);
## `make bench`'s results are put on the card when present.
publish-model: $(STAMP)
	test -n "$(REPO)" || (echo "usage: make publish-model CKPT=folder REPO=user/name" && exit 2)
	$(PYTHON) -m trainer.release --checkpoint $(CKPT) --repo $(REPO) $(if $(wildcard $(BENCH_OUT)/eval/results.json),--results $(BENCH_OUT)/eval/results.json,) $(if $(wildcard $(BENCH_OUT)/mix-bypass96/bench.json),--bench $(BENCH_OUT)/mix-bypass96/bench.json,) $(ARGS)

clean:
	rm -rf out build dist *.egg-info
