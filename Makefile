# `make demo` and `make test` work from a fresh clone: each creates .venv if missing,
# installs the pinned torch pair, then the package with its test extras, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.radloop-installed

.PHONY: install demo test lint bench clean gpu-wheels zoo zoo128

# The packages the GPU machine (Python 3.12, torch 2.11) lacks, as wheels for its platform, into the
# ignored .whl/ that a device call carries (benchmarks/gpu/check.sh installs them there). pycocoevalcap
# is carried without its Java programs and METEOR data (no Java there; 104 MB -> under 1 MB).
GPU_WHEELS := diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 omegaconf==2.4.0 \
	pycocoevalcap==1.2 importlib_metadata==10.2.0
GPU_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PIN)
	$(BIN)/python -m pip install $(TORCH_PIN) -e ".[test,app]"
	# IU X-ray reports ship inside this wheel; its own dependencies are not needed.
	$(BIN)/python -m pip install $(TORCH_PIN) --no-deps torchxrayvision
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/radloop demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: install lint
	$(BIN)/python -m pytest -q

# Re-train every zoo entry from its recipe (configs/zoo/index.yaml), backbone first, then score them all
# and refresh the model cards: about an hour per entry on a 2-core CPU.
ZOO_ENTRIES := radclip_small baseline ifnet uar cmcrl judge64 autoencoder64 autoencoder64_ft ldm64
zoo: install
	for name in $(ZOO_ENTRIES); do $(BIN)/radloop zoo train $$name || exit 1; done
	$(BIN)/python benchmarks/zoo_synth.py --json zoo/synthcxr64/scores.json
	test -f runs/zoo/data/synthcxr64_rare_test/annotation.json || $(BIN)/radloop synth \
		--config configs/zoo/rare_test_data.yaml --out runs/zoo/data/synthcxr64_rare_test
	$(BIN)/python benchmarks/diffusion_synth.py --pipeline zoo:ldm64 --data runs/zoo/data/synthcxr64_test \
		--classifier zoo:judge64 --backbone zoo:radclip_small --run-dir runs/zoo/ldm64 --guidance-grid 1.5 3 5 7 \
		--val-data runs/zoo/data/synthcxr64 --train-data runs/zoo/data/synthcxr64 --val-n 100 --autoencoder-n 300 \
		--n 300 --edits 64 --edit-strengths 0.9 1.0 --edit-guidance 5 \
		--rare-data runs/zoo/data/synthcxr64_rare_test --rare-positives 100 --rare-negatives 100 \
		--out benchmarks/results/zoo_diffusion_synthcxr64_cpu2.json --zoo-results zoo/synthcxr64/scores.json
	for name in $(ZOO_ENTRIES); do $(BIN)/radloop zoo card $$name || exit 1; done

# The 128 px generation (configs/zoo/index128.yaml): the judge, the decoders' tower and UAR on it, the f = 8
# baseline and the f = 4 autoencoder, the generator; then the scores its cards quote. About 5 hours on a 2-core CPU.
ZOO128_ENTRIES := judge128 tower128 uar128 autoencoder128 autoencoder128_f4 ldm128
ZOO128_DATA := runs/zoo/data/synthcxr128
zoo128: install
	for name in $(ZOO128_ENTRIES); do $(BIN)/radloop zoo train $$name || exit 1; done
	test -f $(ZOO128_DATA)_rare_test/annotation.json || $(BIN)/radloop synth \
		--config configs/zoo/rare_test_data.yaml --size 128 --out $(ZOO128_DATA)_rare_test
	$(BIN)/python benchmarks/zoo_synth.py --index configs/zoo/index128.yaml --entries tower128 uar128 \
		--json zoo/synthcxr128/scores.json
	$(BIN)/python benchmarks/judge_scale.py --sizes 128 --reuse 128=zoo:judge128 \
		--out benchmarks/results/judge128_synthcxr128_cpu2.json --zoo-results zoo/synthcxr128/scores.json
	for ae in autoencoder128 autoencoder128_f4; do $(BIN)/python benchmarks/autoencoder_judge.py --vae zoo:$$ae \
		--judge zoo:judge128 --data $(ZOO128_DATA)_rare_test --n 1500 \
		--out benchmarks/results/$${ae}_judge_synthcxr128_cpu2.json --zoo-results zoo/synthcxr128/scores.json \
		|| exit 1; done
	$(BIN)/python benchmarks/diffusion_synth.py --pipeline zoo:ldm128 --data $(ZOO128_DATA)_test \
		--classifier zoo:judge128 --backbone zoo:radclip_small --run-dir runs/zoo/ldm128 --guidance-grid 3 5 7 \
		--val-data $(ZOO128_DATA) --train-data $(ZOO128_DATA) --val-n 100 --n 300 --edits 64 \
		--edit-strengths 0.9 1.0 --edit-guidance 5 \
		--rare-data $(ZOO128_DATA)_rare_test --rare-positives 100 --rare-negatives 100 \
		--out benchmarks/results/zoo_diffusion_synthcxr128_cpu2.json --zoo-results zoo/synthcxr128/scores.json
	for name in $(ZOO128_ENTRIES); do $(BIN)/radloop zoo card $$name || exit 1; done

bench: install
	$(BIN)/python benchmarks/synthcxr_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache

gpu-wheels: install
	rm -rf .whl
	$(BIN)/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	$(BIN)/python benchmarks/gpu/slim_wheel.py .whl/pycocoevalcap-1.2-py3-none-any.whl '*.jar' '*.gz'
	du -sh .whl
