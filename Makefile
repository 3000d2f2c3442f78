# The two commands of the README:  `make demo`  and  `make test`.
# Each bootstraps what it needs (Debian packages, the workspace venv) first.
SHELL := /bin/bash
VENV := .venv

.PHONY: demo test test-fast bootstrap lint clean

bootstrap:
	@bash scripts/bootstrap.sh

demo:
	bash scripts/demo

test:
	bash scripts/test

# The fast tiers only (no lab hosts): what a developer runs while working.
test-fast: bootstrap
	$(VENV)/bin/pytest -m "unit or integration"

lint:
	$(VENV)/bin/ruff check installer server agent tests bench

clean:
	rm -rf $(VENV) build dist
