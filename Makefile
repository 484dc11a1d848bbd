# ChitChat: `make run` to try it, `make test` before every commit, `make bench` for figures.
.PHONY: run build test bench redis-server fuzz soak docs-check text-order

# apt-get needs root: sudo when we are not root.
AS_ROOT := $(if $(filter 0,$(shell id -u)),,sudo)

# Quiet on purpose: `make run` shows what the server prints (README, "Quick start"), not make's
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
# tests/cluster.rs runs redis-server processes of its own (never the system service).
# The one-node build without Redis (`--no-default-features`) is linted and tested too, and
# so is the vendored tiny_http: our patches' unit tests and upstream's tests/ (PATCHES.md,
# "Tests", says why one doctest is skipped).
test: redis-server
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --no-default-features -- -D warnings
	cargo test
	cargo test --no-default-features
	cargo test --locked --manifest-path vendor/tiny_http/Cargo.toml --target-dir target/tiny_http -- --skip Request::as_reader
	bash tests/browser/run.sh

# The several-nodes scenario (benches/load/cluster.rs) runs a redis-server of its own.
bench: redis-server
	bash bench/run.sh

# Debian's redis-server (with redis-cli), installed when missing, for tests/cluster.rs and
# the bench's several-nodes scenario.
redis-server:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { \
		echo "make: installing Debian's redis-server" >&2; \
		$(AS_ROOT) apt-get update && \
		$(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; }

# Every fuzz target for FUZZ_SECONDS each (default 20), one at a time, at low priority:
# builds fuzz/ (its own workspace, on nightly), installing cargo-fuzz and nightly when
# missing. Not part of `make test`. Longer runs: `fuzz/run.sh 600 http_request`.
FUZZ_SECONDS ?= 20
fuzz:
	bash fuzz/run.sh $(FUZZ_SECONDS)

# Ten minutes of 1,000 sockets chatting with people coming and going, at the default limits
# (benches/load/soak.rs): zero server errors, every message to every socket that stayed, the
# server's RSS every 10 s. Not part of `make bench` or `make test`. Writes target/SOAK.md;
# `make soak SOAK_SECONDS=60` for a short run.
SOAK_SECONDS ?= 600
soak:
	bash bench/run.sh --only soak --soak-seconds $(SOAK_SECONDS) --out target/SOAK.md

# Every shell block of README.md, docs/*.md and HACKING.md, pasted in reading order into a
# fresh shell in a scratch copy of the tree (in a network namespace of its own when
# `unshare -n` works), its output compared with the output the file shows: docs/check.py,
# whose opening comment gives the convention. Reuses the release build; needs curl,
# websocat, sqlite3, redis-server and nginx. About two minutes. Not part of `make test`.
docs-check: build redis-server
	python3 docs/check.py

# Writes link/text-order.txt, the layout of the release binary's code that build.rs hands
# to the linker: the functions a server runs at start and in a first visit, found with
# valgrind's callgrind on a release build with a link map (target/text-order/). Run it
# again after a dependency or a release profile setting changes (HACKING.md, "The layout
# of the binary's code"). A few minutes. Not part of `make test`.
text-order:
	python3 link/text_order.py
