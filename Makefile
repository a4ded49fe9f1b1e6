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
	@echo "The run is in output/demo_pcl (what it all means: docs/training.md, 'What the demo"
	@echo "prints'); to search, extract features or export it: docs/using-a-model.md."

# The pictures of docs/visualization.md (docs/images) from the demo model (`make demo`
# first); an unsupervised demo run (output/demo_pcl_unsup, about a minute) gives the
# clustering curves.
DEMO_RUN := --config_file output/demo_pcl/config.yaml TEST.WEIGHT output/demo_pcl/tiny-ViT_12.pth
DEMO_QUERY := demo_data/Market-1501-v15.09.15/query/0002_c1s1_000360_01.jpg
pictures: venv
	test -f output/demo_pcl/tiny-ViT_12.pth || (echo "run make demo first" && false)
	rm -rf output/demo_pictures output/demo_pcl_unsup && mkdir -p docs/images
	$(PY) test_clipreid.py $(DEMO_RUN) OUTPUT_DIR output/demo_pictures TEST.VISUALIZE 1 \
		TEST.VISUALIZE_HEATMAP True TEST.RE_RANKING True TEST.RE_RANKING_K1 "[10, 20, 30]" \
		TEST.RE_RANKING_K2 "[3, 6]" TEST.RE_RANKING_LAMBDA "[0.1, 0.3, 0.5]"
	$(PY) tools/extract_features.py --split gallery --output output/demo_pictures/gallery.npz $(DEMO_RUN)
	$(PY) tools/explain.py --query $(DEMO_QUERY) --gallery output/demo_pictures/gallery.npz \
		--topk 6 --output output/demo_pictures/explain $(DEMO_RUN)
	$(PY) tools/plot_cmc.py --rerank both --output output/demo_pictures/cmc_rerank.png $(DEMO_RUN)
	$(PY) tools/embed_plot.py --split gallery --ids 10 --output output/demo_pictures/embedding.png $(DEMO_RUN)
	$(PY) train_pcl.py --config_file configs/demo/pcl.yml MODEL.UNSUPERVISED True \
		OUTPUT_DIR output/demo_pcl_unsup CLUSTER.K1 10 CLUSTER.K2 3 CLUSTER.EPS 0.5 \
		SOLVER.MAX_EPOCHS 6 SOLVER.EVAL_PERIOD 3 SOLVER.CHECKPOINT_PERIOD 6
	cp output/demo_pictures/rank_lists/00000_*.jpg docs/images/rank_list_heatmaps.jpg
	cp output/demo_pictures/explain/000_*.jpg docs/images/explain.jpg
	cp output/demo_pictures/cmc_rerank.png docs/images/cmc_rerank.png
	cp output/demo_pictures/sweep.png docs/images/sweep.png
	cp output/demo_pictures/embedding.png docs/images/embedding.png
	cp output/demo_pcl/curves.png docs/images/curves.png
	cp output/demo_pcl_unsup/curves.png docs/images/curves_unsupervised.png

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_clustering.py --scales market

.PHONY: venv demo pictures test bench
