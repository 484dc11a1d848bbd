# ChitChat: `make run` to try it, `make test` before every commit, `make bench` for figures.
.PHONY: run build test bench soak

# Quiet on purpose: `make run` shows what the server prints (README, "Run it"), not make's
# echo of each command or cargo's status lines; errors and warnings still show. make stays
# the server's parent whatever the recipe says (`exec` changes nothing), so a Ctrl-C, which
# reaches make too, makes the shell report 130 while the server itself exits 0.
run:
	@cargo build --release --quiet
	@./target/release/chitchat --config config.json

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

# Ten minutes of 1,000 sockets chatting with people coming and going, at the default limits
# (benches/load/soak.rs): zero server errors, every message to every socket that stayed, the
# server's RSS every 10 s. Not part of `make bench` or `make test`. Writes target/SOAK.md;
# `make soak SOAK_SECONDS=60` for a short run.
SOAK_SECONDS ?= 600
soak:
	bash bench/run.sh --only soak --soak-seconds $(SOAK_SECONDS) --out target/SOAK.md
