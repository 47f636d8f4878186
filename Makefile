.PHONY: test lint format bench demo
test:
	HF_HUB_OFFLINE=1 python -m pytest
lint:
	ruff check src tests benchmarks examples
	ruff format --check src tests benchmarks examples
format:
	ruff format src tests benchmarks examples
	ruff check --fix src tests benchmarks examples
demo:
	lmvalue demo
