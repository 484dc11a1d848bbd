#!/usr/bin/env python3
"""Runs every shell block of ChitChat's docs and compares the output they show.

    docs/check.py [--update] [--keep] [FILE...]        (`make docs-check`)

Without FILE it checks README.md, docs/*.md and HACKING.md. Each file is run on its
own, as a new reader would paste it: its blocks in reading order, in one fresh bash,
in a scratch copy of the working tree (tracked and untracked files, not ignored ones,
plus a symlink to the repository's target/ so the release build is reused). When
`unshare -n` works (root, or user namespaces), each file runs in a network namespace
of its own: its ports (8080, 8081, 6390, ...) are its own, so a server already running
on this machine neither disturbs the check nor is disturbed by it, and nothing leaves
loopback. Otherwise the check runs in the host's network and refuses to start while
8080 or 8081 is taken. At the end of each file every process it started is stopped.

The convention (HACKING.md, "The docs check", says the same for writers):

* A ```sh block is commands, exactly what the reader pastes. A ```text block right
  after it (nothing but blank lines between) is its output: stdout and stderr as a
  terminal shows them. A block with no text block after it must exit with status 0;
  one with a text block is judged by its output alone.
* In a text block, values that differ on every run are compared as placeholders:
  RFC 3339 times, the clock time at the start of a log line (`20:32:13 [INFO]`), an
  HTTP `Date:` header, and JWTs (`eyJ...`). The text shown stays a real run's. Beyond
  those, `[...]` inside a line stands for any text, and a line that is just `...`
  for any number of lines: say in the prose what was left out.
* HTML comments before a block, invisible on GitHub, tell the check what a reader
  does by hand:
    <!-- check: skip REASON -->       the next sh block is not run (say why)
    <!-- check: terminal NAME ready=REGEX -->
                                      the next sh block keeps running, in a second
                                      terminal: it starts in a shell of its own and the
                                      check goes on once its output matches REGEX; a
                                      text block after it is what it printed until then
    <!-- check: ctrl-c NAME -->       Ctrl-C in terminal NAME (SIGINT to its process
                                      group), then wait for it to end; a text block
                                      right after the comment is what it printed since
                                      it was ready
* Other blocks (json, yaml, nginx, diff, ...) are not run. A ```console block is an
  error: write the commands as sh and the output as text, so that the commands can
  be pasted as they are.

--host-network runs on this host's loopback even where a namespace would work. --update
rewrites each text block that does not match with the output of this run
(blocks with `[...]` or `...` are left alone and reported), so the output shown is
real; read the diff before committing it. --keep leaves the scratch copies behind.
"""

import argparse
import difflib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_TIMEOUT_S = 300  # the longest a block may run (a first `make run` builds for minutes)
READY_TIMEOUT_S = 900
SETTLE_S = 0.5  # after a terminal's ready line: the log line or two that follow it
STOP_TIMEOUT_S = 30
# Variables a reader's fresh shell would not have, but that would change what the server does.
CLEAN_ENV = ("SECRET_KEY", "ADMIN_KEY", "PORT", "WS_PORT", "REDIS_URL", "GLIBC_TUNABLES")
# ... and make's own, under `make docs-check`: a block's `make run` would say "make[1]: ...".
CLEAN_ENV += ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")

DIRECTIVE = re.compile(r"^<!--\s*check:\s*(\S+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(`{3,})\s*([\w-]*)")


class DocError(Exception):
    """The file breaks the convention (not a failed block)."""


# ---------------------------------------------------------------------------------------
# Reading a file: blocks and directives in order


class Item:
    """One step of a file: an sh block, or a ctrl-c directive, and its expected output."""

    def __init__(self, kind, line, code="", name=None, ready=None, skip=None):
        self.kind = kind  # "sh" or "ctrl-c"
        self.line = line  # 1-based line of the block's opening fence (or the directive)
        self.code = code
        self.name = name  # terminal name, for `terminal` blocks and ctrl-c
        self.ready = ready
        self.skip = skip
        self.expected = None  # (first line, last line, text) of the text block, 1-based
        self.actual = None  # raw output of this run, when compared


def parse(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    items, pending, i = [], None, 0
    last = None  # the item a text block may still attach to
    while i < len(lines):
        line = lines[i]
        d = DIRECTIVE.match(line)
        if d:
            verb, rest = d.group(1), d.group(2)
            if verb == "skip":
                pending = ("skip", rest or "no reason given")
            elif verb == "terminal":
                m = re.match(r"(\S+)\s+ready=(\"[^\"]*\"|\S+)$", rest)
                if not m:
                    raise DocError(f"{path}:{i+1}: terminal NAME ready=REGEX")
                pending = ("terminal", m.group(1), m.group(2).strip('"'))
            elif verb == "ctrl-c":
                last = Item("ctrl-c", i + 1, name=rest)
                items.append(last)
            else:
                raise DocError(f"{path}:{i+1}: unknown directive {verb!r}")
            i += 1
            continue
        f = FENCE.match(line)
        if not f:
            if line.strip():
                last = None
            i += 1
            continue
        fence, lang = f.group(1), f.group(2)
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        if end == len(lines):
            raise DocError(f"{path}:{i+1}: unclosed code block")
        body = "\n".join(lines[i + 1 : end])
        if lang in ("sh", "bash"):
            item = Item("sh", i + 1, code=body)
            if pending and pending[0] == "skip":
                item.skip = pending[1]
            elif pending and pending[0] == "terminal":
                item.name, item.ready = pending[1], pending[2]
            items.append(item)
            last, pending = item, None
        elif lang == "text":
            if last is None or last.expected is not None:
                raise DocError(
                    f"{path}:{i+1}: a text block must come right after an sh block "
                    "or a ctrl-c comment (use ``` alone for other text)"
                )
            last.expected = (i + 2, end, body)
            last = None
        elif lang == "console":
            raise DocError(f"{path}:{i+1}: console block: write sh (commands) and text (output)")
        else:
            last = None
        if pending and lang not in ("sh", "bash"):
            raise DocError(f"{path}:{i+1}: a check comment must come right before an sh block")
        i = end + 1
    return items


# ---------------------------------------------------------------------------------------
# Comparing output

VARIES = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"), "<time>"),
    (re.compile(r"^\d\d:\d\d:\d\d(?= \[[A-Z]+\])"), "<clock>"),
    (re.compile(r"^([Dd]ate): .*$"), r"\1: <date>"),
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), "<jwt>"),
]


def normalise(text):
    out = []
    for line in text.split("\n"):
        for pattern, repl in VARIES:
            line = pattern.sub(repl, line)
        out.append(line.rstrip())
    while out and out[-1] == "":
        out.pop()
    return out


def has_markers(expected):
    return any(l == "..." or "[...]" in l for l in expected.split("\n"))


def matches(expected, actual):
    want, got = normalise(expected), normalise(actual)
    parts = []
    for line in want:
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(p) for p in line.split("[...]")) + r"\n")
    return re.fullmatch("".join(parts), "".join(l + "\n" for l in got)) is not None


def diff(expected, actual):
    return "\n".join(
        difflib.unified_diff(
            normalise(expected), normalise(actual), "shown", "this run", lineterm="", n=2
        )
    )


# ---------------------------------------------------------------------------------------
# Running: one shell per file, terminals beside it


class Shell:
    """A bash the blocks are pasted into, one after another; stdin stays with the check
    (each block reads /dev/null), stdout and stderr come back through one pipe."""

    def __init__(self, cwd, env, blockdir):
        self.blockdir = blockdir
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.buf = b""
        self.eof = False
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            data = os.read(self.proc.stdout.fileno(), 65536)
            with self.cond:
                self.buf = self.buf + data if data else self.buf
                self.eof = not data
                self.cond.notify_all()
            if not data:
                return

    def run(self, code, n):
        path = os.path.join(self.blockdir, f"block-{n}.sh")
        with open(path, "w") as f:
            f.write(code + "\n")
        mark = "__docs_check_" + uuid.uuid4().hex
        with self.cond:
            self.buf = b""
        self.proc.stdin.write(f"source {path} </dev/null\nprintf '\\n{mark} %d\\n' $?\n".encode())
        self.proc.stdin.flush()
        pattern = re.compile(rb"\n" + mark.encode() + rb" (\d+)\n")
        deadline = time.time() + BLOCK_TIMEOUT_S
        with self.cond:
            while True:
                m = pattern.search(self.buf)
                if m:
                    return self.buf[: m.start()].decode(errors="replace"), int(m.group(1))
                if self.eof:
                    return self.buf.decode(errors="replace") + "\n[the shell exited]", -1
                left = deadline - time.time()
                if left <= 0:
                    return self.buf.decode(errors="replace") + "\n[timed out]", -1
                self.cond.wait(left)


class Terminal:
    """A second terminal running one block (`make run`), its output kept in a file."""

    def __init__(self, code, cwd, env, blockdir, name):
        self.path = os.path.join(blockdir, f"terminal-{name}.out")
        script = os.path.join(blockdir, f"terminal-{name}.sh")
        with open(script, "w") as f:
            f.write(code + "\n")
        self.out = open(self.path, "wb")
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc", script],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.mark = 0

    def text(self):
        with open(self.path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_ready(self, regex):
        deadline = time.time() + READY_TIMEOUT_S
        while time.time() < deadline:
            if re.search(regex, self.text(), re.M):
                time.sleep(SETTLE_S)
                out = self.text()
                self.mark = len(out)
                return out, True
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        return self.text(), False

    def ctrl_c(self):
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(STOP_TIMEOUT_S)
            ended = True
        except subprocess.TimeoutExpired:
            ended = False
        return self.text()[self.mark :], ended


def copy_tree(dest):
    """The working tree as a reader's clone would have it (tracked and untracked files,
    not ignored ones), mtimes kept so that cargo finds the shared target/ up to date."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        src = os.path.join(REPO, rel)
        if not os.path.lexists(src):
            continue
        dst = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    if os.path.isdir(os.path.join(REPO, "target")):
        os.symlink(os.path.join(REPO, "target"), os.path.join(dest, "target"))


def processes_of(sessions, netns):
    """Every process started by the check: in one of its sessions, or in its network
    namespace when it has one of its own."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
            sid = int(stat.rsplit(")", 1)[1].split()[3])
            ns = os.readlink(f"/proc/{pid}/ns/net") if netns else None
        except (OSError, IndexError, ValueError):
            continue
        if sid in sessions or (netns and ns == netns):
            found.append(int(pid))
    return found


def stop_all(sessions, netns):
    for sig, pause in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 0.5)):
        pids = processes_of(sessions, netns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + pause
        while time.time() < deadline and processes_of(sessions, netns):
            time.sleep(0.1)


def port_taken(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_file(path, args, own_netns):
    """Runs one file's items; returns (blocks run, compared, skipped, failures)."""
    rel = os.path.relpath(path, REPO)
    items = parse(path)
    netns = os.readlink("/proc/self/ns/net") if own_netns else None
    if not own_netns:
        busy = [p for p in (8080, 8081) if port_taken(p)]
        if busy:
            raise DocError(f"{rel}: port {busy} taken, and no network namespace to run in")
    scratch = tempfile.mkdtemp(prefix="chitchat-docs-")
    blockdir = tempfile.mkdtemp(prefix="chitchat-docs-blocks-")
    copy_tree(scratch)
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    shell = Shell(scratch, env, blockdir)
    terminals, sessions = {}, {shell.proc.pid}
    ran = compared = skipped = 0
    failures = []

    def judge(item, out, ok_status=True, note=""):
        nonlocal compared
        item.actual = out
        where = f"{rel}:{item.line}"
        if item.expected is None:
            if not ok_status:
                failures.append(item)
                print(f"FAIL {where}{note}\n{indent(out)}")
            else:
                print(f"ok   {where}{note}")
            return
        compared += 1
        if matches(item.expected[2], out):
            print(f"ok   {where}{note} (output matches)")
        else:
            failures.append(item)
            print(f"FAIL {where}{note}: output differs\n{indent(diff(item.expected[2], out))}")

    try:
        for n, item in enumerate(items):
            if item.kind == "ctrl-c":
                term = terminals.get(item.name)
                if term is None:
                    raise DocError(f"{rel}:{item.line}: no terminal {item.name!r}")
                out, ended = term.ctrl_c()
                ran += 1
                judge(item, out, ended, f" (Ctrl-C in {item.name})")
            elif item.skip:
                skipped += 1
                print(f"skip {rel}:{item.line}: {item.skip}")
            elif item.name:
                term = Terminal(item.code, scratch, env, blockdir, item.name)
                terminals[item.name] = term
                sessions.add(term.proc.pid)
                out, ready = term.wait_ready(item.ready)
                ran += 1
                if not ready:
                    failures.append(item)
                    print(f"FAIL {rel}:{item.line}: never printed {item.ready!r}\n{indent(out)}")
                else:
                    judge(item, out, True, f" (terminal {item.name})")
            else:
                out, status = shell.run(item.code, n)
                ran += 1
                judge(item, out, status == 0, "" if status == 0 else f" (status {status})")
    finally:
        try:
            shell.proc.stdin.close()
        except OSError:
            pass
        stop_all(sessions, netns)
        if args.keep:
            print(f"     scratch copy kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(blockdir, ignore_errors=True)
    if args.update:
        update(path, failures)
    return ran, compared, skipped, len(failures)


def indent(text):
    return "\n".join("     | " + l for l in text.rstrip("\n").split("\n"))


def update(path, failures):
    """Writes this run's output into the text blocks that did not match."""
    lines = open(path, encoding="utf-8").read().split("\n")
    todo = [f for f in failures if f.expected and f.actual is not None]
    for item in sorted(todo, key=lambda f: -f.expected[0]):
        first, end, shown = item.expected
        if has_markers(shown):
            print(f"     {os.path.relpath(path, REPO)}:{first}: has [...] or ...: update it by hand")
            continue
        new = item.actual.rstrip("\n").split("\n")
        lines[first - 1 : end] = [l.rstrip() for l in new]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


# ---------------------------------------------------------------------------------------


def netns_works():
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--update", action="store_true", help="write this run's output into mismatching text blocks")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copies")
    ap.add_argument("--host-network", action="store_true", help="run on this host's loopback even when unshare -n works")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.inner:  # one file, inside a fresh network namespace: bring up its loopback
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        try:
            ran, compared, skipped, failed = run_file(args.files[0], args, True)
        except DocError as e:
            print(f"FAIL {e}")
            sys.exit(2)
        print(f"     {ran} run, {compared} compared, {skipped} skipped, {failed} failed")
        sys.exit(1 if failed else 0)

    files = args.files or (
        [os.path.join(REPO, "README.md")]
        + sorted(
            os.path.join(REPO, "docs", f)
            for f in os.listdir(os.path.join(REPO, "docs"))
            if f.endswith(".md")
        )
        + [os.path.join(REPO, "HACKING.md")]
    )
    own_netns = not args.host_network and netns_works()
    if not own_netns:
        print("docs-check: no network namespace (unshare -n): running on this host's loopback")
    bad = []
    for path in files:
        path = os.path.abspath(path)
        print(f"== {os.path.relpath(path, REPO)}")
        if own_netns:
            cmd = ["unshare", "-n", sys.executable, os.path.abspath(__file__), "--inner", path]
            cmd[4:4] = [a for a, on in (("--update", args.update), ("--keep", args.keep)) if on]
            sys.stdout.flush()
            code = subprocess.run(cmd).returncode
        else:
            try:
                ran, compared, skipped, failed = run_file(path, args, False)
                print(f"     {ran} run, {compared} compared, {skipped} skipped, {failed} failed")
                code = 1 if failed else 0
            except DocError as e:
                print(f"FAIL {e}")
                code = 2
        if code:
            bad.append(os.path.relpath(path, REPO))
    print("docs-check: " + (f"FAILED in {', '.join(bad)}" if bad else "every block ran as shown"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
