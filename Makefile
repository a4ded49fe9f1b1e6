# `make demo` and `make test` create .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

# Generated data and a tiny random CLIP (written once), then PCL training and evaluation.
# Each `make demo` trains afresh: the previous demo run (output/demo_pcl) is removed first.
demo: venv
	$(PY) -m datasets.demo_data --root demo_data --layouts market1501 --ids 60
	test -f demo_data/tiny_clip_vit.pt || $(PY) -m model.tiny_clip --out demo_data/tiny_clip_vit.pt --arch vit --fmt torchscript
	rm -rf output/demo_pcl
	$(PY) train_pcl.py --config_file configs/demo/pcl.yml
	@echo "Demo done. These numbers come from a tiny randomly initialised CLIP trained on generated"
	@echo "images (before vs after training), not from real CLIP weights or data. For real data:"
	@echo "  python train_pcl.py --config_file configs/pcl/market1501.yml DATASETS.ROOT_DIR /path/to/data"
	@echo "The run is in output/demo_pcl (README: 'What the output means'); to search, extract"
	@echo "features or export it, see the README section 'Use a trained model'."

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_clustering.py --scales market

.PHONY: venv demo test bench
