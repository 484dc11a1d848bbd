# ChitChat: `make run` to try it, `make test` before every commit, `make bench` for figures.
.PHONY: run build test bench

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
