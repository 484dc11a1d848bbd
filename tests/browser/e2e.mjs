// End-to-end test of the web client (web/index.html) in a real headless Chromium, against
// the real server binary: SPEC, "The web client".
//
// What it shows, one test each:
//   1. two people create a private room, enter it, chat, see each other in the people list,
//      and one leaves; user text (titles, messages) is shown literally, nothing in it runs;
//      screenshots of the chat view are saved under target/ for people to look at;
//   2. the people list follows join and leave events, with one read of the room per join
//      of the page's own, not one per event; the page sends only the fields the server reads;
//   3. a dropped socket (server stopped and started again) is reported and rejoined, and
//      with message ids and `since` no message is shown twice and a gap is reported;
//   4. the token is renewed with GET /chats/<id>/token/renew before it expires;
//   5. the creator of a room (the page holds its owner token) sees "edit" and "delete" on
//      it and uses them; nobody else sees them;
//   6. every refusal (401, 403, 429, 503) is said in a sentence a person understands;
//   7. a change of the room's password or visibility closes the page's socket: it comes
//      back by itself with `since` when its password still opens the room, and asks for
//      the password when it does not;
//   8. the page runs under its Content-Security-Policy, and a page of another site can
//      neither create rooms, nor open a socket, nor frame the page.
//
// Run with `tests/browser/run.sh` (installs Chromium and playwright-core when missing) or
// `node --test tests/browser/e2e.mjs`. The binary is $CHITCHAT_BIN, else target/debug/chitchat.
// Debian's /usr/bin/chromium is used; playwright-core never downloads a browser. Chat
// clients without a page use Node's WebSocket (Node 20 needs --experimental-websocket, which
// run.sh adds).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = path.resolve(ROOT, process.env.CHITCHAT_BIN || "target/debug/chitchat");
const SHOTS = path.join(ROOT, "target");
const XSS = "<img src=x onerror=alert(1)>";
const READY_LINE = /^ChitChat (\S+) started at http:\/\/(\S+):(\d+) \(ws:\/\/(\S+):(\d+)\)$/;
const STEP_MS = 10_000; // the longest any single wait in the browser may take

// ---------------------------------------------------------------------------------------
// The server: a child process with a temporary config, stopped at the end even on failure
// ---------------------------------------------------------------------------------------

const running = new Set(); // servers still alive, killed on exit whatever happens

process.on("exit", () => { for (const s of running) s.child.kill("SIGKILL"); });

/** A fresh temporary directory for a server's config and database. */
const scratchDir = () => mkdtempSync(path.join(tmpdir(), "chitchat-e2e-"));

/** Starts the binary on `address`/`wsAddress` (port 0: any free port) and resolves once its
 *  ready line tells the real ports. Its config and database live in `dir`: a fresh one,
 *  removed on stop, unless the caller passes (and owns) one, as a restart does. `config`
 *  adds keys to the config file. */
async function startServer({ address = "127.0.0.1:0", wsAddress = "127.0.0.1:0",
                             dir: givenDir, config: extra = {} } = {}) {
  const dir = givenDir || scratchDir();
  const config = path.join(dir, "config.json");
  writeFileSync(config, JSON.stringify({
    address, ws_address: wsAddress, log_file: null, bcrypt_cost: 4, secret_key: "e2e",
    db_path: path.join(dir, "chitchat.db"), ...extra,
  }));
  const child = spawn(BIN, ["--config", config], { stdio: ["ignore", "pipe", "pipe"] });
  const server = { child, dir, output: "" };
  running.add(server);
  child.stderr.on("data", (d) => { server.output += d; });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  server.stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
    running.delete(server);
    if (!givenDir) rmSync(dir, { recursive: true, force: true });
  };

  const ready = new Promise((resolve, reject) => {
    const fail = (why) => reject(new Error(`${BIN} ${why}\n--- its output ---\n${server.output}`));
    const timer = setTimeout(() => fail("printed no ready line in 15 s"), 15_000);
    child.once("error", (e) => { clearTimeout(timer); fail(`could not start: ${e.message}`); });
    child.once("exit", (code) => { clearTimeout(timer); fail(`exited with ${code} before ready`); });
    createInterface({ input: child.stdout }).on("line", (line) => {
      server.output += line + "\n";
      const m = READY_LINE.exec(line.trim());
      if (!m) return;
      clearTimeout(timer);
      resolve({ version: m[1], host: m[2], httpPort: Number(m[3]), wsPort: Number(m[5]) });
    });
  });
  try {
    Object.assign(server, await ready);
  } catch (e) {
    await server.stop();
    throw e;
  }
  server.url = `http://${server.host}:${server.httpPort}/`;
  return server;
}

// ---------------------------------------------------------------------------------------
// The browser: one Chromium; every person is an isolated context (own storage, own socket)
// ---------------------------------------------------------------------------------------

let browser;

before(async () => {
  // launch() gives Chromium a fresh temporary user-data dir of its own and removes it after.
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => { await browser?.close(); });

/** A new person on the page: dialogs (an alert would mean script ran) and uncaught
 *  exceptions are recorded, and checked by `assertClean`. */
async function openPerson(server, viewport = { width: 1000, height: 700 }, beforeLoad) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  page.dialogs = [];
  page.errors = [];
  page.on("dialog", (d) => { page.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on("pageerror", (e) => { page.errors.push(String(e)); });
  // Anything the page's own Content-Security-Policy blocks is a bug of the page.
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) page.errors.push(m.text());
  });
  if (beforeLoad) await beforeLoad(page);
  await page.goto(server.url);
  return page;
}

function assertClean(page) {
  assert.deepEqual(page.dialogs, [], "no alert or other dialog may open");
  assert.deepEqual(page.errors, [], "the page throws no uncaught error");
  return page.evaluate(() => document.querySelectorAll("img").length)
    .then((n) => assert.equal(n, 0, "no <img> made from user text"));
}

/** Fills the enter form and presses Enter in the password field (keyboard only). */
async function enter(page, { room, name, color, password = "" }) {
  if (room !== undefined) await page.fill("#enter-room", room);
  await page.fill("#enter-name", name);
  if (color) await page.fill("#enter-color", color);
  await page.fill("#enter-password", password);
  await page.press("#enter-password", "Enter");
}

async function waitConnected(page, name) {
  await page.locator("#conn", { hasText: `Connected as ${name}.` }).waitFor();
}

/** Types a message and sends it with Enter. */
async function say(page, text) {
  await page.fill("#msg", text);
  await page.press("#msg", "Enter");
}

/** The message lines of the log as {name, text, time}. */
function messages(page) {
  return page.$$eval("#log li.message", (lis) => lis.map((li) => ({
    name: li.querySelector(".who").textContent,
    text: li.querySelector(".text").textContent,
    time: li.querySelector("time").dateTime,
  })));
}

/** The message lines as [id, text], the id from their data-id (null without one). */
function messageIds(page) {
  return page.$$eval("#log li.message", (lis) => lis.map((li) => [
    li.dataset.id === undefined ? null : Number(li.dataset.id),
    li.querySelector(".text").textContent,
  ]));
}

/** The texts of the log's notices (joins, leaves, notes from the page). */
function notices(page) {
  return page.$$eval("#log li.notice", (lis) => lis.map((li) => li.lastChild.textContent));
}

function people(page) {
  return page.$$eval("#people li", (lis) => lis.map((li) => li.textContent));
}

/** Waits until `read(page)` deep-equals `expected`, then asserts it (a clear diff on failure). */
async function eventually(page, read, expected, what) {
  const until = Date.now() + STEP_MS;
  let last;
  while (Date.now() < until) {
    last = await read(page);
    if (JSON.stringify(last) === JSON.stringify(expected)) return;
    await page.waitForTimeout(100);
  }
  assert.deepEqual(last, expected, what);
}

const lastMessage = async (page) => (await messages(page)).at(-1);

/** Every text frame the page sends on its WebSockets, parsed, in order. */
function framesSent(page) {
  const frames = [];
  page.on("websocket", (ws) => ws.on("framesent", (f) => frames.push(JSON.parse(f.payload))));
  return frames;
}

// ---------------------------------------------------------------------------------------
// Chat clients without a page: a bare WebSocket each, as websocat would be
// ---------------------------------------------------------------------------------------

/** Opens a socket to room `room` (an id) and joins as `name`; resolves once the join came
 *  back. `until(match)` waits for a received event that `match` accepts. */
async function chatClient(server, room, name) {
  if (typeof WebSocket !== "function") {
    throw new Error("Node has no WebSocket: use Node 22, or Node 20 with --experimental-websocket (run.sh does)");
  }
  const ws = new WebSocket(`ws://${server.host}:${server.wsPort}/chats/${room}/ws`);
  const client = { ws, name, events: [], waiting: new Set() };
  ws.onmessage = (m) => {
    const event = JSON.parse(m.data);
    client.events.push(event);
    for (const w of client.waiting) if (w.match(event)) w.done();
  };
  client.until = (match, what = "an event") => new Promise((resolve, reject) => {
    if (client.events.some(match)) return resolve();
    const w = { match };
    const timer = setTimeout(() => {
      client.waiting.delete(w);
      reject(new Error(`${name} waited ${STEP_MS} ms for ${what}`));
    }, STEP_MS);
    w.done = () => { clearTimeout(timer); client.waiting.delete(w); resolve(); };
    client.waiting.add(w);
  });
  client.send = (frame) => ws.send(JSON.stringify(frame));
  client.close = () => ws.close();
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`${name} could not open a socket`));
  });
  client.send({ event_type: "join", name, color: "#8a3ffc" });
  await client.until((e) => e.event_type === "join" && e.name === name, "its own join");
  return client;
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

test("two people create a private room, chat, see each other, and one leaves", { timeout: 90_000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const title = `Book club ${XSS}`;
  const password = "turn-the-page";

  const alice = await openPerson(server);
  const bob = await openPerson(server, { width: 390, height: 740 }); // a phone-sized screen
  await alice.locator("#rooms .room-title", { hasText: "Public Chat" }).waitFor();

  // The limits come from the server: the hints and the title's maxlength say its numbers.
  assert.equal(await alice.textContent("#create-title-hint"), "(2 to 70 characters)");
  assert.equal(await alice.getAttribute("#create-title", "maxlength"), "70");
  assert.equal(await alice.getAttribute("#enter-name", "maxlength"), "32");

  // A title too short: the page says so by the title field, and asks the server nothing.
  const posts = [];
  alice.on("request", (r) => { if (r.method() === "POST") posts.push(r.url()); });
  await alice.fill("#create-title", "x");
  await alice.selectOption("#create-visibility", "private");
  await alice.fill("#create-password", password);
  await alice.press("#create-password", "Enter");
  await alice.locator("#create-title-err", { hasText: "The title needs 2 to 70 characters" }).waitFor();
  assert.equal(await alice.getAttribute("#create-title", "aria-invalid"), "true");
  assert.deepEqual(posts, []);

  // A title only the server refuses (all digits): its error shows next to the title field.
  await alice.fill("#create-title", "2024");
  await alice.press("#create-title", "Enter");
  await alice.locator("#create-title-err", { hasText: "Invalid content" }).waitFor();
  assert.equal(await alice.getAttribute("#create-title", "aria-invalid"), "true");

  // Now a good one; its title and description are shown as text.
  await alice.fill("#create-title", title);
  await alice.fill("#create-description", "<b>chapter 3</b>");
  await alice.press("#create-title", "Enter");
  await alice.locator("#create-ok", { hasText: title }).waitFor();
  assert.equal(await alice.textContent("#create-title-err"), "");

  // Bob's list picks the new room up by itself (it is refreshed every few seconds).
  const bobsRoom = bob.locator("#rooms button", { hasText: title });
  await bobsRoom.waitFor();
  assert.equal(await bobsRoom.locator(".room-title").textContent(), title);

  // Alice enters: the create form already put the title and password in the enter form.
  assert.equal(await alice.inputValue("#enter-room"), title);
  await enter(alice, { name: "Alice", color: "#b3261e", password });
  await waitConnected(alice, "Alice");
  assert.equal(await alice.textContent("#chat-title"), title);

  // Every control has a label (keyboard and screen-reader users need them).
  const unlabelled = await bob.$$eval("input, select", (els) =>
    els.filter((el) => el.labels.length === 0).map((el) => el.id));
  assert.deepEqual(unlabelled, []);

  // Bob picks the room from the list by keyboard: focus goes on to the name field.
  // A wrong password is shown next to the password field.
  await bobsRoom.focus();
  await bob.evaluate(() => loadRooms()); // the periodic refresh must not steal the focus
  assert.equal(await bob.evaluate(() => document.activeElement.textContent), await bobsRoom.textContent());
  await bob.keyboard.press("Enter");
  assert.equal(await bob.evaluate(() => document.activeElement.id), "enter-name");
  await enter(bob, { name: "Bob", color: "#1b7f3b", password: "not-the-password" });
  await bob.locator("#enter-password-err", { hasText: "Unauthorized" }).waitFor();
  await enter(bob, { name: "Bob", color: "#1b7f3b", password });
  await waitConnected(bob, "Bob");

  // Both see both in the people list; Alice sees Bob come in.
  await eventually(alice, people, ["Alice (you)", "Bob"], "Alice's people list");
  await eventually(bob, people, ["Alice", "Bob (you)"], "Bob's people list");
  await alice.locator("#log li.notice", { hasText: "Bob entered the room." }).waitFor();

  // A third person without a name is stopped by the page; taking a name already in the
  // room, she gets the server's 202 error by the name field.
  const carol = await openPerson(server);
  await enter(carol, { room: title, name: " ", password });
  await carol.locator("#enter-name-err", { hasText: "A name needs 1 to 32 characters." }).waitFor();
  await enter(carol, { room: title, name: "alice", password });
  await carol.locator("#enter-name-err", { hasText: "Duplicate username" }).waitFor();
  assert.equal(await carol.isVisible("#lobby"), true);
  mkdirSync(SHOTS, { recursive: true });
  await carol.screenshot({ path: path.join(SHOTS, "lobby-screenshot.png"), fullPage: true });

  // They chat; Enter sends; every message carries the server's time.
  await say(alice, "Hello Bob!");
  await eventually(bob, async (p) => (await lastMessage(p))?.text, "Hello Bob!", "Bob gets it");
  const hello = await lastMessage(bob);
  assert.equal(hello.name, "Alice");
  assert.ok(Math.abs(Date.parse(hello.time) - Date.now()) < 60_000, `server time ${hello.time}`);

  await say(bob, XSS);
  await eventually(alice, async (p) => (await lastMessage(p))?.text, XSS, "the XSS line as text");
  assert.equal((await lastMessage(alice)).name, "Bob");
  await say(alice, "Ha, nice try. That stays text.");
  await eventually(bob, async (p) => (await lastMessage(p))?.text,
                   "Ha, nice try. That stays text.", "Bob gets the reply");

  // Pictures of the chat view for people to look at.
  await alice.screenshot({ path: path.join(SHOTS, "chat-screenshot.png") });
  await bob.screenshot({ path: path.join(SHOTS, "chat-screenshot-phone.png") });

  // Bob leaves: he is back in the lobby; Alice sees the notice and a shorter list.
  await bob.focus("#leave");
  await bob.keyboard.press("Enter");
  assert.equal(await bob.isVisible("#lobby"), true);
  await alice.locator("#log li.notice", { hasText: "Bob has left the room." }).waitFor();
  await eventually(alice, people, ["Alice (you)"], "Alice alone");

  for (const page of [alice, bob, carol]) await assertClean(page);
});

test("the people list follows joins and leaves, reading the room once", { timeout: 60_000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const clients = [];
  t.after(() => clients.forEach((c) => c.close()));
  // Someone is in before the page comes: only the page's one read of the room shows her.
  clients.push(await chatClient(server, 1, "Early"));

  const gail = await openPerson(server);
  const sent = framesSent(gail);
  // Reads of the room (GET /chats/<room>) once the page has opened its socket. The one
  // that looks the room up on entering comes before; the list of rooms is GET /chats.
  const roomReads = [];
  let socketOpened = false;
  gail.on("websocket", () => { socketOpened = true; });
  gail.on("request", (r) => {
    const isRoom = /^\/chats\/[^/]+$/.test(new URL(r.url()).pathname);
    if (socketOpened && r.method() === "GET" && isRoom) roomReads.push(r.url());
  });
  await gail.click("#rooms button:has-text('Public Chat')");
  await enter(gail, { name: "Gail", color: "#1b7f3b" });
  await waitConnected(gail, "Gail");
  await eventually(gail, people, ["Early", "Gail (you)"], "the people who were there first");

  // A join storm: five come in at once, then three leave by saying so and two just go.
  const names = ["Hugo", "Ines", "Jack", "Kim", "Lea"];
  clients.push(...await Promise.all(names.map((name) => chatClient(server, 1, name))));
  await eventually(gail, people, ["Early", "Gail (you)", ...names], "all seven");
  assert.equal(await gail.textContent("#people-h"), "People (7)");
  for (const c of clients.slice(1, 4)) c.send({ event_type: "leave" });
  for (const c of clients.slice(4)) c.close();
  await eventually(gail, people, ["Early", "Gail (you)"], "the five are gone");
  assert.equal(roomReads.length, 1, "one read of the room after joining, not one per event");

  // The frames carry only what the server reads: no name or colour on a send or a leave,
  // and no `since` on a first join.
  await say(gail, "hello");
  await eventually(gail, async (p) => (await lastMessage(p))?.text, "hello", "Gail's message");
  await gail.click("#leave");
  await eventually(gail, () => sent, [
    { event_type: "join", name: "Gail", color: "#1b7f3b" },
    { event_type: "send", msg: "hello" },
    { event_type: "leave" },
  ], "the frames the page sent");
  await assertClean(gail);
});

test("a dropped connection is reported, then rejoined when the server is back", { timeout: 90_000 }, async (t) => {
  // Restarts keep the database (and so the room's messages and their ids): one directory.
  const dir = scratchDir();
  const config = { history_len: 3 }; // keeps 3 messages: a longer absence leaves a gap
  let server = await startServer({ dir, config });
  t.after(async () => { await server.stop(); rmSync(dir, { recursive: true, force: true }); });
  const restart = async () => {
    await server.stop();
    await dana.locator("#conn.down", { hasText: "Disconnected" }).waitFor();
    // Same ports again: the page keeps its origin and WebSocket port.
    server = await startServer({ address: `127.0.0.1:${server.httpPort}`,
                                 wsAddress: `127.0.0.1:${server.wsPort}`, dir, config });
  };
  // A fake clock holds the reconnect back-off until the test lets time run on.
  const dana = await openPerson(server, undefined, (page) => page.clock.install());
  const sent = framesSent(dana);
  await dana.click("#rooms button:has-text('Public Chat')");
  await enter(dana, { name: "Dana" });
  await waitConnected(dana, "Dana");
  await say(dana, "one");
  await say(dana, "two");
  await eventually(dana, async (p) => (await lastMessage(p))?.text, "two", "Dana's messages");

  // Away while five messages are said; the server keeps the last three of them.
  await dana.clock.pauseAt(await dana.evaluate(() => Date.now() + 10));
  await restart();
  assert.equal(await dana.isDisabled("#send-form button"), true);
  const other = await chatClient(server, 1, "Otto");
  for (const n of [3, 4, 5, 6, 7]) other.send({ event_type: "send", msg: `m${n}` });
  await other.until((e) => e.event_type === "send" && e.msg === "m7" && !e.replay, "its m7");
  other.close();

  await dana.clock.resume();
  await dana.locator("#conn", { hasText: "Connected as Dana." }).waitFor({ timeout: 20_000 });
  await eventually(dana, people, ["Dana (you)"], "Dana is back in the list");
  await say(dana, "back again");
  await eventually(dana, async (p) => (await lastMessage(p))?.text, "back again", "sends again");

  // From here on the server must number messages and honour `since` (SPEC, "Message ids,
  // history and resuming"). Dana saw 1 and 2; of 3 to 7 the server kept 5 to 7.
  await eventually(dana, messageIds, [[1, "one"], [2, "two"], [5, "m5"], [6, "m6"], [7, "m7"],
                                      [8, "back again"]], "every message once, by id");
  assert.equal((await notices(dana)).filter((n) => n === "2 messages were missed.").length, 1);

  // Away again, with nothing said meanwhile: nothing replayed, nothing missed.
  await dana.clock.pauseAt(await dana.evaluate(() => Date.now() + 10));
  await restart();
  await dana.clock.resume();
  await dana.locator("#conn", { hasText: "Connected as Dana." }).waitFor({ timeout: 20_000 });
  await say(dana, "and again");
  await eventually(dana, messageIds, [[1, "one"], [2, "two"], [5, "m5"], [6, "m6"], [7, "m7"],
                                      [8, "back again"], [9, "and again"]], "still once each");
  assert.equal((await notices(dana)).filter((n) => n.endsWith("missed.")).length, 1);
  const joins = sent.filter((f) => f.event_type === "join");
  assert.deepEqual(joins.map((f) => f.since), [undefined, 2, 8], "join, then resume twice");
  await dana.screenshot({ path: path.join(SHOTS, "chat-screenshot-resumed.png") });

  // Someone new gets the kept history, dimmed as replayed, and no word of missed ones.
  const finn = await openPerson(server);
  await finn.click("#rooms button:has-text('Public Chat')");
  await enter(finn, { name: "Finn" });
  await waitConnected(finn, "Finn");
  await eventually(finn, messageIds, [[7, "m7"], [8, "back again"], [9, "and again"]],
                   "the kept history");
  assert.equal(await finn.locator("#log li.message.replay").count(), 3);
  assert.deepEqual((await notices(finn)).filter((n) => n.endsWith("missed.")), []);
  for (const page of [dana, finn]) await assertClean(page);
});

test("the token is renewed shortly before it expires", { timeout: 60_000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const created = await fetch(server.url + "chats", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ title: "Night shift", visibility: "hidden", password: "owl-owl-owl" }),
  });
  assert.equal(created.status, 201);

  // A fake clock lets an hour pass in a moment; the server checks the real time.
  const erin = await openPerson(server, undefined, (page) => page.clock.install());
  await enter(erin, { room: "night shift", name: "Erin", password: "owl-owl-owl" }); // any case
  await waitConnected(erin, "Erin");
  const first = await erin.evaluate(() => session.token);

  const renewal = erin.waitForResponse((r) => r.url().endsWith("/token/renew"));
  await erin.clock.fastForward("59:30"); // the token lives 60 minutes
  const response = await renewal;
  assert.equal(response.request().headers()["authorization"], `Bearer ${first}`);
  assert.equal(response.status(), 201);
  const body = await response.json();
  await eventually(erin, (p) => p.evaluate(() => session.token), body.token, "new token kept");

  await say(erin, "still here");
  await eventually(erin, async (p) => (await lastMessage(p))?.text, "still here", "chat goes on");
  await assertClean(erin);
});

/** POST /chats from the test itself (no Origin: as curl); resolves to the 201's JSON. */
async function createRoom(server, body) {
  const res = await fetch(server.url + "chats", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  assert.equal(res.status, 201, await res.clone().text());
  return res.json();
}

test("the creator edits and deletes its room; nobody else can", { timeout: 60_000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const hana = await openPerson(server);
  const ivan = await openPerson(server);
  await hana.locator("#rooms .room-title", { hasText: "Public Chat" }).waitFor();
  assert.equal(await hana.locator("#rooms button.own").count(), 0, "Public Chat is nobody's");

  await hana.fill("#create-title", "Hana's corner");
  await hana.fill("#create-description", "tea");
  await hana.press("#create-title", "Enter");
  await hana.locator("#create-ok", { hasText: "keeps the key" }).waitFor();
  const row = hana.locator("#rooms li", { hasText: "Hana's corner" });
  await row.locator("button.own", { hasText: "edit" }).waitFor();
  assert.equal(await row.locator("button.own", { hasText: "delete" }).count(), 1);
  // Ivan sees the room, without the owner's buttons.
  await ivan.locator("#rooms .room-title", { hasText: "Hana's corner" }).waitFor();
  assert.equal(await ivan.locator("#rooms button.own").count(), 0);

  // Edit: a new description; a bad title is refused by the field, in words.
  await row.locator("button.own", { hasText: "edit" }).click();
  assert.equal(await hana.inputValue("#edit-title"), "Hana's corner");
  await hana.fill("#edit-title", "1234");
  await hana.press("#edit-title", "Enter");
  await hana.locator("#edit-title-err", { hasText: "not only digits" }).waitFor();
  await hana.fill("#edit-title", "Hana's corner");
  await hana.fill("#edit-description", "tea and biscuits");
  await hana.press("#edit-description", "Enter");
  await hana.locator("#rooms-ok", { hasText: "“Hana's corner” saved." }).waitFor();
  await hana.locator("#rooms .room-meta", { hasText: "tea and biscuits" }).waitFor();
  assert.equal(await hana.isVisible("#edit-form"), false);

  // A hidden room of hers is listed for her only, with its buttons.
  await hana.fill("#create-title", "Hana's den");
  await hana.selectOption("#create-visibility", "hidden");
  await hana.fill("#create-password", "den-password");
  await hana.press("#create-title", "Enter");
  await hana.locator("#rooms li", { hasText: "Hana's den" }).locator("button.own").first().waitFor();
  await ivan.evaluate(() => loadRooms());
  assert.equal(await ivan.locator("#rooms .room-title", { hasText: "Hana's den" }).count(), 0);
  mkdirSync(SHOTS, { recursive: true });
  await hana.screenshot({ path: path.join(SHOTS, "owner-screenshot.png"), fullPage: true });

  // Delete asks once more, then the room is gone for everyone.
  await row.locator("button.own", { hasText: "delete" }).click();
  await hana.click("#edit-delete");
  await hana.locator("#edit-delete", { hasText: "Really delete it?" }).waitFor();
  await hana.click("#edit-delete");
  await hana.locator("#rooms-ok", { hasText: "“Hana's corner” deleted." }).waitFor();
  // The list is redrawn from a fresh GET /chats, which may land after the message.
  await hana.locator("#rooms .room-title", { hasText: "Hana's corner" }).waitFor({ state: "detached" });
  const left = await (await fetch(server.url + "chats")).json();
  assert.deepEqual(left.map((r) => r.title), ["Public Chat"]);
  for (const page of [hana, ivan]) await assertClean(page);
});

test("every refusal is said in words: 401, 403, 429, 503", { timeout: 60_000 }, async (t) => {
  const server = await startServer({ config: { rooms_per_minute: 1 } });
  t.after(() => server.stop());
  await createRoom(server, { title: "Vault", visibility: "private", password: "vault-pass" });
  const jo = await openPerson(server);
  await jo.locator("#rooms .room-title", { hasText: "Vault" }).waitFor();

  // 401: a wrong password.
  await enter(jo, { room: "Vault", name: "Jo", password: "not it" });
  await jo.locator("#enter-password-err", { hasText: "Wrong or missing password." }).waitFor();

  // 429: a second room within the minute (rooms_per_minute is 1, the test used it).
  await jo.fill("#create-title", "One too many");
  await jo.press("#create-title", "Enter");
  await jo.locator("#create-form-err", {
    hasText: /Too many attempts from your connection\. Please wait \d+ seconds and try again\./,
  }).waitFor();

  // 403: a key to a room that is not valid (here: one this browser kept, then spoiled).
  const vault = (await (await fetch(server.url + "chats")).json()).find((r) => r.title === "Vault");
  await jo.evaluate((id) => localStorage.setItem("chitchat-owned",
    JSON.stringify({ [id]: "not.a.token" })), vault.id);
  await jo.evaluate(() => loadRooms());
  await jo.locator("#rooms li", { hasText: "Vault" }).locator("button.own", { hasText: "edit" }).click();
  await jo.press("#edit-description", "Enter");
  await jo.locator("#edit-form-err", { hasText: "key to change the room is no longer valid" }).waitFor();

  // 503: the server's answer while its storage is unavailable (605), as it sends it.
  // The page lists rooms with GET /chats?limit=100 (SPEC: at most 100 at a time).
  await jo.route(/\/chats(\?.*)?$/, (route) => route.fulfill({
    status: 503, contentType: "application/json",
    body: '{"status":false,"error":{"code":605,"error":"Backend error: Storage unavailable"}}\n',
  }));
  await jo.click("#refresh");
  await jo.locator("#rooms-info", { hasText: "The server cannot save anything right now." }).waitFor();
  await jo.screenshot({ path: path.join(SHOTS, "refusals-screenshot.png"), fullPage: true });
  await assertClean(jo);
});

test("a change of password or visibility closes the socket: back by itself, or asked", { timeout: 60_000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const room = await createRoom(server, { title: "Moving room", visibility: "private",
                                          password: "first-pass" });
  const change = (body) => fetch(server.url + "chats/" + room.id, {
    method: "PUT", headers: { "Content-Type": "application/json",
                              Authorization: "Bearer " + room.owner_token },
    body: JSON.stringify(body),
  }).then((r) => assert.equal(r.status, 200));

  const kim = await openPerson(server);
  const sent = framesSent(kim);
  await enter(kim, { room: "Moving room", name: "Kim", password: "first-pass" });
  await waitConnected(kim, "Kim");
  await say(kim, "before");
  await eventually(kim, messageIds, [[1, "before"]], "the first message");

  // Hidden now, same password: the page comes back by itself, by title, with `since`.
  await change({ visibility: "hidden" });
  await kim.locator("#log li.notice", { hasText: "password or visibility has changed" }).waitFor();
  await kim.locator("#conn", { hasText: "Connected as Kim." }).waitFor({ timeout: 20_000 });
  await eventually(kim, () => sent.filter((f) => f.event_type === "join").map((f) => f.since),
                   [undefined, 1], "rejoined with since");
  await say(kim, "after");
  await eventually(kim, messageIds, [[1, "before"], [2, "after"]], "each message once");

  // A new password: the page goes back to the form and asks for it.
  await change({ password: "second-pass" });
  await kim.locator("#enter-password-err", { hasText: "The room's password has changed" })
    .waitFor({ timeout: 20_000 });
  assert.equal(await kim.inputValue("#enter-password"), "", "the old password is not kept");
  assert.equal(await kim.isVisible("#lobby"), true);
  await kim.screenshot({ path: path.join(SHOTS, "access-changed-screenshot.png"), fullPage: true });
  await enter(kim, { room: "Moving room", name: "Kim", password: "second-pass" });
  await waitConnected(kim, "Kim");
  await assertClean(kim);
});

test("another site's page can create nothing, open no socket, frame nothing", { timeout: 60_000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  // A second web server, on another host name (localhost, not 127.0.0.1): another site.
  const api = `http://127.0.0.1:${server.httpPort}`;
  const wsUrl = `ws://127.0.0.1:${server.wsPort}/chats/1/ws`;
  const evilPage = `<!doctype html><title>evil</title>
<iframe id="framed" src="${api}/"></iframe>
<form id="f" method="POST" action="${api}/chats" enctype="text/plain">
<input name='{"title":"Spam","visibility":"public","x":"' value='"}'></form>
<script>
window.results = {};
fetch("${api}/chats", { method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" },
  body: JSON.stringify({ title: "Spam too", visibility: "public" }) })
  .then(() => { results.fetch = "sent"; }, () => { results.fetch = "failed"; });
const ws = new WebSocket("${wsUrl}");
ws.onopen = () => { results.socket = "open"; };
ws.onclose = () => { results.socket = results.socket || "refused"; };
</script>`;
  const evil = createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/html" });
    res.end(evilPage);
  });
  await new Promise((resolve) => evil.listen(0, "127.0.0.1", resolve));
  t.after(() => evil.close());
  const context = await browser.newContext();
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  await page.goto(`http://localhost:${evil.address().port}/`);
  await page.waitForFunction(() => window.results.socket && window.results.fetch);
  assert.equal(await page.evaluate(() => window.results.socket), "refused");
  // The form post too (a text/plain form is what any page may send without asking).
  await Promise.all([page.waitForNavigation(), page.evaluate(() => document.getElementById("f").submit())]);
  assert.match(await page.content(), /Origin not allowed/);
  const rooms = await (await fetch(server.url + "chats")).json();
  assert.deepEqual(rooms.map((r) => r.title), ["Public Chat"], "no room was created");

  // Framed, the page is not shown: frame-ancestors 'none' (and X-Frame-Options: DENY).
  const framer = await context.newPage();
  await framer.goto(`http://localhost:${evil.address().port}/`);
  await framer.waitForLoadState("load");
  const frame = framer.frames().find((f) => f !== framer.mainFrame());
  assert.ok(frame, "the iframe exists");
  assert.equal(await frame.locator("#rooms").count(), 0, "the chat page is not shown in a frame");
  await framer.screenshot({ path: path.join(SHOTS, "cross-site-screenshot.png") });
  await context.close();
});

test("the page lists at most 100 rooms, however many the server holds", { timeout: 60_000 }, async (t) => {
  const server = await startServer({ config: { rooms_per_minute: 0 } });
  t.after(() => server.stop());
  for (let i = 1; i <= 101; i++) {
    await createRoom(server, { title: `Room number ${i}`, visibility: "public" });
  }
  const all = await (await fetch(server.url + "chats")).json();
  assert.equal(all.length, 102);
  const visitor = await openPerson(server);
  await visitor.locator("#rooms .room-title", { hasText: "Room number 99" }).waitFor();
  assert.equal(await visitor.locator("#rooms .room-title").count(), 100);
  assert.equal(await visitor.locator("#rooms .room-title", { hasText: "Room number 100" }).count(), 0);
  await assertClean(visitor);
});
