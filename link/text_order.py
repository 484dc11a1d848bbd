#!/usr/bin/env python3
"""Writes link/text-order.txt: the functions of the release binary in the order the linker
is to lay them out (build.rs hands the file to rust-lld). First those a server runs from
its start to its ready line and through one idle second, then those one visit adds (REST
calls, a token, two chat sockets); the linker places every other function after them.

It builds the release binary with a link map (target/text-order/), runs it under
valgrind's callgrind, which records every instruction address the server executes, dumps
those after start and again after the visit, and names each address's function from the
map. Why the layout matters, and when to run this again: HACKING.md, "The layout of the
binary's code".

usage: python3 link/text_order.py        (make text-order; needs valgrind; minutes)
"""

import base64
import bisect
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.path.join(ROOT, "target", "text-order")
MAP = os.path.join(TARGET_DIR, "chitchat.map")
BINARY = os.path.join(TARGET_DIR, "release", "chitchat")
ORDER = os.path.join(ROOT, "link", "text-order.txt")
READY = re.compile(r"started at http://([\d.]+):(\d+) \(ws://[\d.]+:(\d+)\)")
# The server re-executes itself with this set unless it is set already (src/main.rs);
# valgrind would lose sight of the re-executed process.
TUNABLES = "glibc.malloc.tcache_count=0"
# The linker map's line for one input section: address, size, and the section's name.
SECTION = re.compile(r"\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+\S.*:\((\.text\.\S+)\)$")


def main():
    subprocess.run(
        ["cargo", "build", "--release", "--target-dir", TARGET_DIR],
        cwd=ROOT,
        env=dict(os.environ, CHITCHAT_LINK_MAP=MAP),
        check=True,
    )
    sections = read_map(MAP)
    with tempfile.TemporaryDirectory() as work:
        started, visited = run_server(work)
        # Sorted by name within each part, so that the file changes only where the code did.
        at_start = sorted(functions(sections, started))
        in_visit = sorted(set(functions(sections, visited)) - set(at_start))
    write_order(sections, at_start, in_visit)


def run_server(work):
    """Runs the server under callgrind; returns its two dumps' paths (start, visit)."""
    with open(os.path.join(ROOT, "config.json")) as f:
        config = json.load(f)
    config.update(
        address="127.0.0.1:0",
        ws_address="127.0.0.1:0",
        db_path=os.path.join(work, "chitchat.db"),
        log_file=os.path.join(work, "chitchat.log"),
    )
    config_path = os.path.join(work, "config.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    out = os.path.join(work, "callgrind.out")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-pos=no",
         "--compress-strings=no", f"--callgrind-out-file={out}",
         BINARY, "--config", config_path],
        env=dict(os.environ, GLIBC_TUNABLES=TUNABLES),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in server.stdout:
            ready = READY.search(line)
            if ready:
                break
        else:
            sys.exit("text_order: the server stopped before its ready line")
        host, http_port, ws_port = ready.group(1), int(ready.group(2)), int(ready.group(3))
        time.sleep(1)  # as the footprint bench reads a server: right after start, and 1 s on
        started = dump(server.pid, out + ".1")
        visit(host, http_port, ws_port)
        visited = dump(server.pid, out + ".2")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    return started, visited


def dump(pid, path):
    """Asks callgrind for a dump of what ran since the last one; waits until it is written."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    size = -1
    while not os.path.exists(path) or os.path.getsize(path) != size:
        size = os.path.getsize(path) if os.path.exists(path) else -1
        time.sleep(0.5)
    return path


def visit(host, http_port, ws_port):
    """What one person's first minutes ask of a server, as the README and docs/api.md show."""
    def call(method, path, body=None, token=None):
        connection = http.client.HTTPConnection(host, http_port, timeout=120)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = body if isinstance(body, bytes) or body is None else json.dumps(body)
        connection.request(method, path, data, headers)
        reply = connection.getresponse()
        text = reply.read()
        connection.close()
        return reply.status, text

    call("GET", "/")
    call("GET", "/healthz")
    call("GET", "/metrics")
    call("GET", "/nope")
    call("POST", "/chats", b"{")
    _, public = call("POST", "/chats", {"title": "Book club", "visibility": "public"})
    _, private = call("POST", "/chats", {"title": "Staff", "visibility": "private",
                                          "password": "correct horse"})
    private, owner = json.loads(private)["id"], json.loads(private)["owner_token"]
    public = json.loads(public)["id"]
    call("GET", "/chats")
    status, text = call("POST", f"/chats/{private}/token", {"name": "ann", "secret": "correct horse"})
    if status != 201:
        sys.exit(f"text_order: no token ({status}): {text!r}")
    token = json.loads(text)["token"]
    call("GET", f"/chats/{private}", token=token)
    call("GET", f"/chats/{private}/token/renew", token=token)
    call("PUT", f"/chats/{private}", {"description": "Anyone?"}, token=token)
    call("PUT", f"/chats/{private}", {"description": "Teachers only"}, token=owner)
    chat(host, ws_port, f"/chats/{public}/ws", "bob", None)
    chat(host, ws_port, f"/chats/{private}/ws", "ann", token)
    call("GET", f"/chats/{public}/messages")
    call("GET", f"/chats/{private}/messages?limit=10", token=token)


def chat(host, port, path, name, token):
    """One chat socket: join, send, read the echo, leave."""
    with socket.create_connection((host, port), timeout=120) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n".encode()
        )
        reader = s.makefile("rb")
        while reader.readline() not in (b"\r\n", b""):
            pass
        for event in ({"event_type": "join", "name": name},
                      {"event_type": "send", "msg": "Hello"},
                      {"event_type": "nonsense"}):
            s.sendall(frame(json.dumps(event).encode()))
        while b'"msg":"Hello"' not in read_frame(reader):
            pass
        s.sendall(frame(json.dumps({"event_type": "leave"}).encode()))
        s.sendall(frame(b"\x03\xe8", opcode=0x8))
        while read_frame(reader):
            pass


def frame(payload, opcode=0x1):
    """A masked client frame (payloads under 126 bytes here)."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frame(reader):
    """The next server frame's payload; empty at the close frame or the end."""
    head = reader.read(2)
    if len(head) < 2 or head[0] & 0x0F == 0x8:
        return b""
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(reader.read(2), "big")
    elif length == 127:
        length = int.from_bytes(reader.read(8), "big")
    return reader.read(length)


def read_map(path):
    """The map's code sections as sorted (address, size, name) triples."""
    sections = []
    with open(path) as f:
        for line in f:
            section = SECTION.match(line)
            if section:
                sections.append((int(section.group(1), 16), int(section.group(2), 16), section.group(3)))
    return sorted(sections)


def functions(sections, dump_path):
    """The binary's sections that a callgrind dump executed in."""
    starts = [address for address, _, _ in sections]
    found = set()
    in_binary = False
    with open(dump_path) as f:
        for line in f:
            if line.startswith("ob="):
                in_binary = line.rstrip().endswith("/chitchat")
            elif in_binary and line.startswith("0x"):
                address = int(line.split(maxsplit=1)[0], 16)
                i = bisect.bisect_right(starts, address) - 1
                if i >= 0 and address < sections[i][0] + sections[i][1]:
                    found.add(sections[i][2])
    return found


def write_order(sections, at_start, in_visit):
    size = {name: size for _, size, name in sections}
    total = sum(size.values())
    start_bytes = sum(size[name] for name in at_start)
    visit_bytes = sum(size[name] for name in in_visit)
    with open(ORDER, "w") as f:
        f.write(
            "# Written by link/text_order.py (make text-order); read by build.rs. The functions\n"
            "# a release server runs, in the order the linker is to place them: see HACKING.md,\n"
            '# "The layout of the binary\'s code".\n'
            f"# {len(sections)} functions, {total} bytes of code in all.\n"
            f"# From start to one idle second: {len(at_start)} functions, {start_bytes} bytes.\n"
        )
        f.writelines(symbol(name) + "\n" for name in at_start)
        f.write(f"# Added by one visit: {len(in_visit)} functions, {visit_bytes} bytes.\n")
        f.writelines(symbol(name) + "\n" for name in in_visit)
    print(f"text_order: wrote {ORDER}: {len(at_start)} + {len(in_visit)} functions, "
          f"{start_bytes} + {visit_bytes} of {total} bytes")


def symbol(section):
    """The function a section holds: its name without `.text.` (and `.unlikely.`, ...)."""
    return re.sub(r"^\.text\.(unlikely\.|hot\.|startup\.|exit\.)?", "", section)


if __name__ == "__main__":
    main()
