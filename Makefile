# The two commands of the README. The first call of either installs everything from
# pyproject.toml + pdm.lock into .venv (PDM itself goes into .pdm-bootstrap).
PYTHON ?= python3
PDM_HOME := .pdm-bootstrap
PDM := $(PDM_HOME)/bin/pdm
export PDM_CHECK_UPDATE := false
# PDM's HTTP cache keeps another copy of every download (torch with its CUDA libraries is
# several GB) and grew to 41 GB under ~/.cache over repeated fresh installs, until an install ran
# out of disk; it lives in the project and goes once .venv is synced.
export PDM_CACHE_DIR := $(abspath $(PDM_HOME))/cache

.PHONY: demo test

demo: .venv/.synced
	.venv/bin/m3vit simulate --config edge-moe --task 0 1

test: .venv/.synced
	.venv/bin/python -m pytest -n auto --dist loadgroup

$(PDM):
	$(PYTHON) -m venv $(PDM_HOME)
	$(PDM_HOME)/bin/python -m pip install -q "pdm==2.29.3" "unearth<0.19" "hishel[httpx]<2"

.venv/.synced: pyproject.toml pdm.lock | $(PDM)
	$(PDM) sync -G test
	rm -rf $(PDM_CACHE_DIR)/http
	touch $@
