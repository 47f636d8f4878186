.PHONY: test lint format bench demo
test:
	HF_HUB_OFFLINE=1 python -m pytest
lint:
	ruff check src tests benchmarks
	ruff format --check src tests benchmarks
format:
	ruff format src tests benchmarks
	ruff check --fix src tests benchmarks
demo:
	lmvalue demo
