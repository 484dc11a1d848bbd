#!/usr/bin/env bash
# `make bench`: builds the release server and the load generator (benches/load.rs), raises
# the open-files limit, runs every scenario against a real server over loopback, and
# rewrites BENCHMARKS.md. Takes about seven and a half minutes on two cores (the scale
# scenario alone over two: its join storm, then a minute idle; the guessing flood about
# 20 s, more against a server without bcrypt limits, whose queued guesses finish late;
# the several-nodes scenario about 50 s, three fan-outs with a redis-server of its own).
#
# Arguments are passed to the generator, e.g. `bench/run.sh --only fanout --seconds 3`
# (see the top of benches/load.rs). CHITCHAT_BIN overrides the server binary. `make soak`
# runs `bench/run.sh --only soak --soak-seconds 600 --out target/SOAK.md`: ten minutes
# more, and never part of a plain run.
set -euo pipefail
cd "$(dirname "$0")/.."

build=(cargo build --release --bins --benches)
# One build for both: the JSON messages name the generator's executable, whose file name
# carries a hash; compiler diagnostics still go to the terminal.
mkdir -p target
"${build[@]}" --message-format=json-render-diagnostics >target/bench-build.json
generator=$(grep '"kind":\["bench"\]' target/bench-build.json | grep '"name":"load"' \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$generator" ]; then
  echo "bench/run.sh: cargo built no load generator" >&2
  exit 1
fi

# The scale scenario holds 9,000 sockets: two descriptors each in the generator (the
# socket and the clone that ends its reader) and in the server (the socket and its
# eventfd), about 18,200 per process, well over the usual 1,024. The server inherits
# this limit from the generator; with a hard limit below that, the scenario scales down
# and says so. The soak needs about 2,200 in the generator (three per socket that stays:
# its reader, the clone that ends it, the writer) and 2,000 in the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

"$generator" \
  --prelude "make bench   # runs bench/run.sh" \
  --prelude "${build[*]}" \
  --prelude "ulimit -n $(ulimit -n)" \
  "$@"

# A full run (no arguments) ends the report with the analysis of the targets it misses,
# which is written by hand in bench/analysis.md.
if [ $# -eq 0 ]; then
  cat bench/analysis.md >>BENCHMARKS.md
fi
