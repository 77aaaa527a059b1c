# Entry points; the logic lives in scripts/.
.PHONY: setup test lint bench-storage dev dev-stop quickstart

setup:
	scripts/setup.sh

## Runs every test, installing what a fresh machine lacks first.
test:
	scripts/test.sh

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench-storage: setup
	cargo build --workspace --all-targets
	"$$(scripts/target-dir.sh)/ferrolog" bench storage --groups 1,16,256 --group-commit both --duration 5

## A local 3-broker cluster in the background (127.0.0.1:9092-9094).
dev:
	scripts/dev.sh start

dev-stop:
	scripts/dev.sh stop

## Runs the README quickstart verbatim.
quickstart:
	scripts/quickstart.sh
