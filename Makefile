# ChitChat: `make run` to try it, `make test` before every commit, `make bench` for figures.
.PHONY: run build test bench fuzz

run: build
	./target/release/chitchat --config config.json

build:
	cargo build --release

# Everything CI checks: formatting, lints, unit and integration tests, then the browser
# end-to-end test (which installs Chromium and its npm client when they are missing).
test:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo test
	bash tests/browser/run.sh

bench:
	bash bench/run.sh

# Every fuzz target for FUZZ_SECONDS each (default 20), one at a time, at low priority:
# builds fuzz/ (its own workspace, on nightly), installing cargo-fuzz and nightly when
# missing. Not part of `make test`. Longer runs: `fuzz/run.sh 600 http_request`.
FUZZ_SECONDS ?= 20
fuzz:
	bash fuzz/run.sh $(FUZZ_SECONDS)
