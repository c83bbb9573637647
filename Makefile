# The commands a newcomer needs. `make run` and `make test` each do all set-up on a fresh machine.
.PHONY: run test setup lint format lfw bench

run:            ## install, migrate, create a demo admin, run the server and the django-q worker
	bash scripts/run.sh

test:           ## install and run the whole test suite (with lint and a migration check)
	bash scripts/test.sh

setup:
	bash scripts/setup.sh --dev

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports --no-logo

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

LFW ?= ../shared/datasets/lfw
lfw:            ## LFW 10-fold verification accuracy of the production pipeline
	.venv/bin/python manage.py evaluate_lfw $(LFW)

bench:          ## benchmark suite, each figure beside its baseline (see BENCHMARKS.md); QUICK=1 for a short run
	bash scripts/setup.sh && TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python manage.py benchmark --lfw $(LFW) $(if $(QUICK),--quick,)
