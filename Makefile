# Entry points; the logic lives in scripts/.
.PHONY: setup test lint bench-storage

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
	target/debug/ferrolog bench storage --groups 1,16,256 --group-commit both --duration 5
