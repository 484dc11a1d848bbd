//! Several nodes (SPEC, "Several nodes (Redis)"; issue 14): two ChitChat nodes started with the
//! same `redis_url` and secret serve one chat.
//!
//! Each test starts its own `redis-server` (Debian's package; `make test` installs it when
//! missing) on a free port, in a scratch directory, with persistence off unless the test says
//! otherwise, never the system service, and kills it when dropped. Nodes run in-process
//! (`chitchat::start`), except where a node must die by SIGKILL: that one is the real binary.
//! Nothing sleeps to synchronise: tests wait for the condition they need, with a deadline.
//! Built only with the `redis` feature (the default).

#![cfg(feature = "redis")]

mod common;
mod prometheus;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{
    error_body, http_request, test_config, ws_connect, Binary, Client, Scratch, TestServer, TIMEOUT,
};
use prometheus::Scrape;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse";

/// A `redis-server` of the test's own, killed when dropped.
struct Redis {
    port: u16,
    /// Its working directory (the append-only file), removed with it.
    _dir: Scratch,
    args: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    /// A Redis without persistence on a free port.
    fn start(test: &str) -> Redis {
        Redis::start_with(test, &["--appendonly", "no"])
    }

    /// A Redis with `extra` arguments (e.g. `--appendonly yes`).
    fn start_with(test: &str, extra: &[&str]) -> Redis {
        let port = free_port();
        let scratch = Scratch::new(&format!("redis-{test}"));
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &scratch.dir.display().to_string(),
            "--save",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut redis = Redis {
            port,
            _dir: scratch,
            args,
            child: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        while !self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            // Polling a process that is starting, not synchronising with the server.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 5];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs `redis-cli` against it and returns what it printed.
    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8(output.stdout).expect("redis-cli prints UTF-8")
    }

    /// SIGKILL: what a crash or an operator's `kill -9` does.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (what persistence kept comes back).
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A node of the chat served by `redis`, with `presence_ttl_s` = `ttl`.
fn node(redis: &Redis, ttl: Duration) -> TestServer {
    let url = redis.url();
    TestServer::start_with(move |config| {
        config.redis_url = Some(url);
        config.presence_ttl = ttl;
    })
}

/// Two nodes of one chat.
fn two_nodes(redis: &Redis) -> (TestServer, TestServer) {
    let ttl = Duration::from_secs(15);
    (node(redis, ttl), node(redis, ttl))
}

/// Waits until `condition` holds, checking every few milliseconds; panics naming `what`.
fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out awaiting {what}");
        // Polling a condition with a deadline, not a fixed sleep.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A room's sorted usernames.
fn usernames(room: &Value) -> Vec<String> {
    let mut names: Vec<String> = room["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users in {room}"))
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Opens a socket to a private room with `name`'s bearer token.
fn ws_with_token(server: &TestServer, room_id: u64, token: &str) -> Client {
    use tungstenite::client::IntoClientRequest;
    let mut request = server
        .ws_url(&format!("/chats/{room_id}/ws"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    server.ws_request(request).expect("the handshake succeeds")
}

/// Collects `count` `send` events from `client` as (name, msg, id).
fn sends(client: &mut Client, count: usize) -> Vec<(String, String, u64)> {
    (0..count)
        .map(|_| {
            let e = client.next_event_where("a send event", |e| e["event_type"] == "send");
            (
                e["name"].as_str().unwrap().to_owned(),
                e["msg"].as_str().unwrap().to_owned(),
                e["id"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn join_since(client: &mut Client, name: &str, since: u64) {
    client.send_json(
        &json!({"event_type": "join", "name": name, "color": "#123456", "since": since}),
    );
}

// -----------------------------------------------------------------------------------------
// Rooms across nodes

/// A room created on node A is read, changed and deleted through node B, and each change is
/// seen at once on A (read-through: no cache to go stale).
#[test]
fn a_room_created_on_one_node_is_read_changed_and_deleted_on_the_other() {
    let redis = Redis::start("rooms-across");
    let (a, b) = two_nodes(&redis);
    let created = a.create_room("Across", "public", None);
    let id = created["id"].as_u64().unwrap();
    let on_b = b.get(&format!("/chats/{id}"));
    assert_eq!(on_b.status, 200, "{}", on_b.body);
    assert_eq!(on_b.json()["title"], "Across");
    assert_eq!(b.get("/chats/across").json()["id"], id);
    let listed = b.get("/chats").json();
    assert!(listed.as_array().unwrap().iter().any(|r| r["id"] == id));

    let changed = b.put(
        &format!("/chats/{id}"),
        &json!({"title": "Across renamed", "description": "new"}),
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    let on_a = a.get(&format!("/chats/{id}")).json();
    assert_eq!(
        (&on_a["title"], &on_a["description"]),
        (&json!("Across renamed"), &json!("new"))
    );
    assert_eq!(a.get("/chats/across").status, 404);
    assert_eq!(a.get("/chats/Across%20renamed").json()["id"], id);

    let deleted = b.delete(&format!("/chats/{id}"));
    assert_eq!(
        (deleted.status, deleted.json()),
        (200, json!({"status": true}))
    );
    let gone = a.get(&format!("/chats/{id}"));
    assert_eq!((gone.status, gone.json()), (404, error_body(101, None)));
}

/// Room ids are unique across nodes: 2 nodes x 20 threads creating at once get 40 different
/// ids, and a deleted room's id is not handed out again by either node.
#[test]
fn room_ids_are_unique_when_two_nodes_create_rooms_at_once() {
    let redis = Redis::start("ids");
    let (a, b) = two_nodes(&redis);
    let addrs = [a.http_addr, b.http_addr];
    let barrier = Arc::new(Barrier::new(40));
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let (addr, barrier) = (addrs[i % 2], Arc::clone(&barrier));
            std::thread::spawn(move || {
                let body =
                    json!({"title": format!("room {i}"), "visibility": "public"}).to_string();
                barrier.wait();
                let response = http_request(
                    addr,
                    "POST",
                    "/chats",
                    &[("Content-Type", "application/json")],
                    Some(body.as_bytes()),
                );
                assert_eq!(response.status, 201, "{}", response.body);
                response.json()["id"].as_u64().unwrap()
            })
        })
        .collect();
    let mut ids: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (2..42).collect::<Vec<u64>>());
    assert_eq!(a.delete("/chats/41").status, 200);
    assert_eq!(b.create_room("after", "public", None)["id"], 42);
}

/// Titles are unique across nodes, case-insensitively: the second node refuses a title the
/// first took (102), for a new room and for a rename.
#[test]
fn titles_are_unique_across_nodes() {
    let redis = Redis::start("titles");
    let (a, b) = two_nodes(&redis);
    a.create_room("Taken", "public", None);
    let again = b.post("/chats", &json!({"title": "TAKEN", "visibility": "public"}));
    assert_eq!(
        (again.status, again.json()),
        (400, error_body(102, Some("title")))
    );
    let other = b.create_room("Other", "public", None);
    let rename = a.put(
        &format!("/chats/{}", other["id"]),
        &json!({"title": "taken"}),
    );
    assert_eq!(
        (rename.status, rename.json()),
        (400, error_body(102, Some("title")))
    );
}

/// A token issued by node A opens the private room on node B (the same secret, hash and id
/// make the same key), for the socket and for GET with users; its owner token, from A's
/// 201, changes it on B, where the room token cannot (104) and no token is 403.
#[test]
fn a_token_issued_by_one_node_opens_the_room_on_the_other() {
    let redis = Redis::start("tokens");
    let (a, b) = two_nodes(&redis);
    let created = a.create_room("Private", "private", Some(PASSWORD));
    let id = created["id"].as_u64().unwrap();
    let owner = created["owner_token"].as_str().unwrap();
    let token = a.token(&id.to_string(), "ann", PASSWORD);
    let mut ann = ws_with_token(&b, id, &token);
    ann.join("ann");
    let room = b
        .send("GET", &format!("/chats/{id}"), Some(&token), None)
        .json();
    assert_eq!(usernames(&room), ["ann"]);
    let without = b.get(&format!("/chats/{id}")).json();
    assert_eq!(without.get("users"), None);
    let path = format!("/chats/{id}");
    let change = json!({"description": "d"});
    let put = b.send("PUT", &path, Some(owner), Some(&change));
    assert_eq!(put.status, 200, "{}", put.body);
    let put = b.send("PUT", &path, Some(&token), Some(&change));
    assert_eq!((put.status, put.json()), (401, error_body(104, None)));
    let put = b.send("PUT", &path, None, Some(&change));
    assert_eq!((put.status, put.json()), (403, error_body(403, None)));
}

/// Who may change a room holds across nodes (issue 20): on node B, a room created on A
/// refuses no token (403), its room token (104), another room's owner token (401) and an
/// expired owner token (403); its owner token from A's 201 and the admin key change it.
#[test]
fn only_the_owner_or_the_admin_changes_a_room_on_either_node() {
    let redis = Redis::start("owners");
    let (a, b) = two_nodes(&redis);
    let created = a.create_room("Owned", "private", Some(PASSWORD));
    let id = created["id"].as_u64().unwrap();
    let owner = created["owner_token"].as_str().unwrap();
    let other = a.create_room("Other", "public", None);
    let other_owner = other["owner_token"].as_str().unwrap();
    let token = a.token("Owned", "ann", PASSWORD);
    let expired = {
        let key = format!(
            "{}\nowner\n{id}\n{}",
            b.secret,
            created["createdAt"].as_str().unwrap()
        );
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 10;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"room_id": id, "owner": true, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let path = format!("/chats/{id}");
    let body = json!({"description": "changed"});
    for (token, status, code) in [
        (None, 403, 403),
        (Some(token.as_str()), 401, 104),
        (Some(other_owner), 401, 401),
        (Some(expired.as_str()), 403, 403),
    ] {
        let put = b.send("PUT", &path, token, Some(&body));
        assert_eq!((put.status, put.json()), (status, error_body(code, None)));
        let delete = b.send("DELETE", &path, token, None);
        assert_eq!(
            (delete.status, delete.json()),
            (status, error_body(code, None))
        );
    }
    assert_eq!(b.send("PUT", &path, Some(owner), Some(&body)).status, 200);
    let admin = b.send("PUT", "/chats/1", Some(common::ADMIN_KEY), Some(&body));
    assert_eq!(admin.status, 200, "{}", admin.body);
    assert_eq!(a.get("/chats/1").json()["description"], "changed");
    assert_eq!(a.send("DELETE", &path, Some(owner), None).status, 200);
}

/// A password change made through node A closes the room's sockets on node B too (error
/// 104, then 1008), through the subscription's `a` event; their names are given up in
/// Redis, so the same person joins again at once with a token of the new password.
#[test]
fn a_password_change_on_one_node_closes_the_rooms_sockets_on_the_other() {
    let redis = Redis::start("access");
    let (a, b) = two_nodes(&redis);
    let created = a.create_room("Moving", "private", Some(PASSWORD));
    let id = created["id"].as_u64().unwrap();
    let owner = created["owner_token"].as_str().unwrap();
    let token = a.token("Moving", "ann", PASSWORD);
    let mut ann = ws_with_token(&b, id, &token);
    ann.join("ann");
    let mut lurker = ws_with_token(&b, id, &token);
    let change = json!({"password": "a new password"});
    let put = a.send("PUT", &format!("/chats/{id}"), Some(owner), Some(&change));
    assert_eq!(put.status, 200, "{}", put.body);
    for client in [&mut ann, &mut lurker] {
        let error = client.next_event_where("the 104 event", |e| e["event_type"] == "error");
        assert_eq!(error["error"]["code"], 104);
        assert_eq!(client.expect_close(), 1008);
    }
    let fresh = b.token("Moving", "ann", "a new password");
    wait_until("ann's name given up", TIMEOUT, || {
        a.send("GET", &format!("/chats/{id}"), Some(&fresh), None)
            .json()["users"]
            == json!([])
    });
    let mut again = ws_with_token(&a, id, &fresh);
    again.join("ann");
}

/// `users` lists the members of every node, on every node.
#[test]
fn users_lists_the_members_of_every_node() {
    let redis = Redis::start("users");
    let (a, b) = two_nodes(&redis);
    let mut ann = a.ws("/chats/1/ws");
    ann.join("ann");
    let mut bob = b.ws("/chats/1/ws");
    bob.join("bob");
    for node in [&a, &b] {
        assert_eq!(usernames(&node.get("/chats/1").json()), ["ann", "bob"]);
        let listed = node.get("/chats").json();
        assert_eq!(usernames(&listed[0]), ["ann", "bob"]);
    }
    bob.send_json(&json!({"event_type": "leave"}));
    ann.next_event_where("bob's leave", |e| {
        e["event_type"] == "leave" && e["name"] == "bob"
    });
    assert_eq!(usernames(&a.get("/chats/1").json()), ["ann"]);
}

// -----------------------------------------------------------------------------------------
// Chat across nodes

/// Names are unique per room across nodes: "ann" joined on A, "ANN" on B is refused with 202
/// and B's socket stays open and may join as another name.
#[test]
fn names_are_unique_across_nodes() {
    let redis = Redis::start("names");
    let (a, b) = two_nodes(&redis);
    let mut ann = a.ws("/chats/1/ws");
    ann.join("ann");
    let mut other = b.ws("/chats/1/ws");
    other.send_json(&json!({"event_type": "join", "name": "ANN"}));
    let error = other.next_event_where("an error event", |e| e["event_type"] == "error");
    let mut expected = error_body(202, Some("name"));
    expected["event_type"] = json!("error");
    assert_eq!(error, expected);
    other.join("bob");
    ann.next_event_where("bob's join on A", |e| {
        e["event_type"] == "join" && e["name"] == "bob"
    });
}

/// Two speakers on different nodes talk at once; four sockets, two per node, see the same
/// sequence of messages, numbered 1, 2, 3... in that order (Redis's order, from one script).
#[test]
fn sockets_on_two_nodes_see_two_speakers_in_one_order() {
    let redis = Redis::start("order");
    let (a, b) = two_nodes(&redis);
    const EACH: usize = 30;
    let mut clients: Vec<Client> = Vec::new();
    for (i, node) in [&a, &b, &a, &b].iter().enumerate() {
        let mut client = node.ws("/chats/1/ws");
        client.join(&format!("user{i}"));
        clients.push(client);
    }
    // Everyone has joined (each saw its own join after the others'), so everyone hears all.
    let barrier = Arc::new(Barrier::new(clients.len()));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                if i < 2 {
                    for n in 0..EACH {
                        client.say(&format!("{i}-{n}"));
                    }
                }
                sends(&mut client, 2 * EACH)
            })
        })
        .collect();
    let seen: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ids: Vec<u64> = seen[0].iter().map(|(_, _, id)| *id).collect();
    assert_eq!(ids, (1..=2 * EACH as u64).collect::<Vec<_>>());
    for other in &seen[1..] {
        assert_eq!(other, &seen[0]);
    }
}

/// History and ids are shared: messages said on A are replayed to a socket joining on B
/// (with `since` picking the newer ones), and `GET .../messages` on B lists them.
#[test]
fn history_and_since_are_shared_by_the_nodes() {
    let redis = Redis::start("history");
    let (a, b) = two_nodes(&redis);
    let mut ann = a.ws("/chats/1/ws");
    ann.join("ann");
    for msg in ["one", "two", "three"] {
        ann.say(msg);
    }
    assert_eq!(sends(&mut ann, 3).last().unwrap().2, 3);
    let mut bob = b.ws("/chats/1/ws");
    join_since(&mut bob, "bob", 1);
    let replayed: Vec<Value> = (0..2).map(|_| bob.next_event()).collect();
    let got: Vec<(&Value, &Value, &Value)> = replayed
        .iter()
        .map(|e| (&e["msg"], &e["id"], &e["replay"]))
        .collect();
    assert_eq!(
        got,
        [
            (&json!("two"), &json!(2), &json!(true)),
            (&json!("three"), &json!(3), &json!(true))
        ]
    );
    let own = bob.next_event();
    assert_eq!(
        (&own["event_type"], &own["name"]),
        (&json!("join"), &json!("bob"))
    );
    let listed = b.get("/chats/1/messages?since=2").json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["msg"], "three");
}

/// Deleting a room on one node closes its sockets on the other (a 101 event, then 1001), and
/// leaves nothing of its members behind in Redis.
#[test]
fn deleting_a_room_on_one_node_closes_its_sockets_on_the_other() {
    let redis = Redis::start("delete");
    let (a, b) = two_nodes(&redis);
    let id = a.create_room("Doomed", "public", None)["id"]
        .as_u64()
        .unwrap();
    let mut bob = b.ws(&format!("/chats/{id}/ws"));
    bob.join("bob");
    assert_eq!(a.delete(&format!("/chats/{id}")).status, 200);
    let error = bob.next_event_where("the 101 event", |e| e["event_type"] == "error");
    assert_eq!(error["error"]["code"], 101);
    assert_eq!(bob.expect_close(), 1001);
    let held = redis.cli(&["--scan", "--pattern", "chitchat:node:*:members"]);
    for node_key in held.lines() {
        let fields = redis.cli(&["HKEYS", node_key]);
        assert!(
            !fields.contains(&format!("{id}:")),
            "{node_key} still holds {fields}"
        );
    }
    assert_eq!(
        redis
            .cli(&["EXISTS", &format!("chitchat:members:{id}")])
            .trim(),
        "0"
    );
}

/// A node that stops cleanly broadcasts its members' leaves at once, through Redis.
#[test]
fn a_node_that_shuts_down_broadcasts_its_members_leaves() {
    let redis = Redis::start("shutdown");
    let (a, mut b) = two_nodes(&redis);
    let mut ann = a.ws("/chats/1/ws");
    ann.join("ann");
    let mut bob = b.ws("/chats/1/ws");
    bob.join("bob");
    b.stop();
    ann.next_event_where("bob's leave", |e| {
        e["event_type"] == "leave" && e["name"] == "bob"
    });
    assert_eq!(usernames(&a.get("/chats/1").json()), ["ann"]);
}

/// A node killed with SIGKILL says nothing; within `presence_ttl_s` (2 s here) the live node
/// broadcasts its members' leaves, once each, and their names are free again.
#[test]
fn a_killed_nodes_members_leave_within_presence_ttl() {
    let redis = Redis::start("kill");
    let ttl = Duration::from_secs(2);
    let a = node(&redis, ttl);
    let scratch = Scratch::new("cluster-kill");
    let config = json!({
        "address": "127.0.0.1:0", "ws_address": "127.0.0.1:0", "log_file": null,
        "log_level": "warn", "bcrypt_cost": 4, "secret_key": test_config().secret_key,
        "redis_url": redis.url(), "presence_ttl_s": 2,
    });
    let mut doomed = Binary::spawn_with_config(&scratch, &config, &[]);
    let (_, ws) = doomed.ready();
    let mut watcher = a.ws("/chats/1/ws");
    watcher.join("watcher");
    let mut victims: Vec<Client> = ["bob", "carl"]
        .iter()
        .map(|name| {
            let mut client = ws_connect(ws, "/chats/1/ws");
            client.join(name);
            client
        })
        .collect();
    for name in ["bob", "carl"] {
        watcher.next_event_where("a victim's join", |e| {
            e["event_type"] == "join" && e["name"] == name
        });
    }
    doomed.kill();
    let killed = Instant::now();
    let mut left = Vec::new();
    for _ in 0..2 {
        let leave = watcher.next_event_where("a leave", |e| e["event_type"] == "leave");
        left.push(leave["name"].as_str().unwrap().to_owned());
    }
    let took = killed.elapsed();
    left.sort();
    assert_eq!(left, ["bob", "carl"]);
    // By design at most the ttl (a heartbeat lasts ttl - beat, a reaper runs every beat;
    // 1.5 s measured here); the slack is for a loaded machine's scheduling.
    assert!(took <= ttl + Duration::from_secs(1), "leaves took {took:?}");
    assert_eq!(usernames(&a.get("/chats/1").json()), ["watcher"]);
    let mut again = a.ws("/chats/1/ws");
    again.join("bob");
    // Each leave came once: the next event the watcher sees is bob's new join.
    let next = watcher.next_event();
    assert_eq!(
        (&next["event_type"], &next["name"]),
        (&json!("join"), &json!("bob"))
    );
    drop(victims.drain(..));
}

// -----------------------------------------------------------------------------------------
// Redis down and back

/// Redis killed and restarted (append-only file, fsync always, so what it acknowledged
/// survives): while it is down, REST writes answer 503/605, `/healthz` 503, and sockets are
/// closed with 1012; once it is back, both nodes are healthy again by themselves, rooms and
/// messages acknowledged before are all there, a new room gets a new id, and a socket that
/// resumes with `since` sees nothing twice.
#[test]
fn redis_restart_closes_sockets_with_1012_and_the_nodes_recover() {
    let mut redis = Redis::start_with(
        "restart",
        &["--appendonly", "yes", "--appendfsync", "always"],
    );
    let (a, b) = two_nodes(&redis);
    let id = a.create_room("Durable", "public", None)["id"]
        .as_u64()
        .unwrap();
    let mut ann = a.ws(&format!("/chats/{id}/ws"));
    ann.join("ann");
    let mut bob = b.ws(&format!("/chats/{id}/ws"));
    bob.join("bob");
    ann.say("before");
    assert_eq!(sends(&mut bob, 1)[0].2, 1);

    redis.kill();
    assert_eq!(ann.expect_close(), 1012);
    assert_eq!(bob.expect_close(), 1012);
    let unavailable = json!({"status": false, "error": {"code": 605, "error": "Backend error: Storage unavailable"}});
    let refused = a.post(
        "/chats",
        &json!({"title": "During", "visibility": "public"}),
    );
    assert_eq!((refused.status, refused.json()), (503, unavailable.clone()));
    for node in [&a, &b] {
        let health = node.get("/healthz");
        assert_eq!((health.status, health.json()), (503, unavailable.clone()));
    }

    redis.restart();
    for node in [&a, &b] {
        wait_until("healthz 200 again", TIMEOUT, || {
            node.get("/healthz").status == 200
        });
    }
    assert_eq!(b.get(&format!("/chats/{id}")).json()["title"], "Durable");
    assert_eq!(b.create_room("After", "public", None)["id"], id + 1);
    // The names held before the outage were retired when the nodes came back.
    assert_eq!(
        usernames(&b.get(&format!("/chats/{id}")).json()),
        Vec::<String>::new()
    );
    let mut ann = a.ws(&format!("/chats/{id}/ws"));
    join_since(&mut ann, "ann", 1);
    let own = ann.next_event();
    assert_eq!(
        (&own["event_type"], &own["name"]),
        (&json!("join"), &json!("ann"))
    );
    let mut bob = b.ws(&format!("/chats/{id}/ws"));
    join_since(&mut bob, "bob", 0);
    let replayed = bob.next_event();
    assert_eq!(
        (&replayed["msg"], &replayed["id"], &replayed["replay"]),
        (&json!("before"), &json!(1), &json!(true))
    );
    bob.next_event_where("bob's join", |e| {
        e["event_type"] == "join" && e["name"] == "bob"
    });
    bob.say("after");
    assert_eq!(
        sends(&mut ann, 1),
        [("bob".to_owned(), "after".to_owned(), 2)]
    );
}

// -----------------------------------------------------------------------------------------
// The main REST and chat behaviours on a two-node cluster

/// The REST rules hold when each request goes to either node: validation (105), a private
/// room's token rules (304, 403), the room answered 201 with its Location and no hash, and
/// deleted by its owner token from the other node.
#[test]
fn rest_rules_hold_across_two_nodes() {
    let redis = Redis::start("rest");
    let (a, b) = two_nodes(&redis);
    let bad = a.post("/chats", &json!({"title": "x", "visibility": "public"}));
    assert_eq!(
        (bad.status, bad.json()),
        (400, error_body(105, Some("title")))
    );
    let created = b.post(
        "/chats",
        &json!({"title": "Club", "visibility": "private", "password": PASSWORD}),
    );
    assert_eq!(created.status, 201);
    let room = created.json();
    let id = room["id"].as_u64().unwrap();
    assert_eq!(
        created.header("Location"),
        Some(format!("/chats/{id}").as_str())
    );
    assert_eq!(
        common::room_without_times(&room),
        json!({"id": id, "title": "Club", "description": "", "visibility": "private"})
    );
    let wrong = a.post(
        &format!("/chats/{id}/token"),
        &json!({"name": "ann", "secret": "nope-nope"}),
    );
    assert_eq!(
        (wrong.status, wrong.json()),
        (401, error_body(304, Some("secret")))
    );
    let no_token = b.send("DELETE", &format!("/chats/{id}"), None, None);
    assert_eq!(no_token.status, 403);
    let token = a.token("Club", "ann", PASSWORD);
    let renewed = b.send(
        "GET",
        &format!("/chats/{id}/token/renew"),
        Some(&token),
        None,
    );
    assert_eq!(renewed.status, 201, "{}", renewed.body);
    let owner = room["owner_token"].as_str().unwrap();
    let deleted = b.send("DELETE", &format!("/chats/{id}"), Some(owner), None);
    assert_eq!(deleted.status, 200);
    // The token died with the room, on both nodes.
    assert_eq!(
        a.send("GET", &format!("/chats/{id}"), Some(&token), None)
            .status,
        404
    );
}

/// The chat rules hold across nodes: a send before join is 201 to that socket only; the
/// name broadcast is the joined one, whatever the frame claims; a leave is broadcast and the
/// socket may join again; the events have the exact shape on the other node.
#[test]
fn chat_rules_hold_across_two_nodes() {
    let redis = Redis::start("chat");
    let (a, b) = two_nodes(&redis);
    let mut ann = a.ws("/chats/1/ws");
    ann.say("too early");
    let error = ann.next_event_where("the 201 event", |e| e["event_type"] == "error");
    assert_eq!(error["error"]["code"], 201);
    ann.join("ann");
    let mut bob = b.ws("/chats/1/ws");
    bob.join("bob");
    ann.next_event_where("bob's join", |e| e["name"] == "bob");
    ann.send_json(&json!({"event_type": "send", "name": "bob", "msg": "hi"}));
    let heard = bob.next_event_where("ann's message", |e| e["event_type"] == "send");
    let time = heard["time"].as_str().unwrap().to_owned();
    assert!(common::is_rfc3339(&time));
    assert_eq!(
        heard,
        json!({"event_type": "send", "name": "ann", "color": "#123456", "msg": "hi", "room_id": 1, "time": time, "id": 1})
    );
    ann.send_json(&json!({"event_type": "leave"}));
    let left = bob.next_event_where("ann's leave", |e| e["event_type"] == "leave");
    assert_eq!(left["msg"], "ann has left the room.");
    ann.join("ann");
    bob.next_event_where("ann's second join", |e| {
        e["event_type"] == "join" && e["name"] == "ann"
    });
}

/// A Redis that stops answering without closing anything (`CLIENT PAUSE`: what a hung server
/// or a silently dropped connection looks like) is noticed by the subscription's ping: the
/// node closes its sockets with 1012 and answers 503, then serves again once Redis answers.
#[test]
fn a_redis_that_stops_answering_closes_sockets_with_1012_until_it_answers() {
    let redis = Redis::start("pause");
    let a = node(&redis, Duration::from_secs(15));
    let mut ann = a.ws("/chats/1/ws");
    ann.join("ann");
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "4000", "ALL"]).trim(), "OK");
    let paused = Instant::now();
    assert_eq!(ann.expect_close(), 1012);
    assert!(
        paused.elapsed() < Duration::from_secs(4),
        "noticed only after the pause"
    );
    assert_eq!(a.get("/healthz").status, 503);
    wait_until("healthz 200 after the pause", TIMEOUT, || {
        a.get("/healthz").status == 200
    });
    let mut ann = a.ws("/chats/1/ws");
    ann.join("ann");
}

/// Back-pressure across nodes: a socket on node B that stops reading cannot slow a speaker
/// on node A (B's subscriber never waits): B's channels overshoot their bound, the laggard
/// is closed with 1008 and its leave broadcast, and a socket on B that reads gets every
/// message in order.
/// (The flooder floods on purpose: `msgs_per_second` is off.)
#[test]
fn a_reader_that_stops_reading_on_another_node_is_closed_and_slows_no_one() {
    /// Messages sent before the flooder waits until the reader on B has them.
    const WINDOW: usize = 8;
    /// Bytes of text in each message: the slow socket's kernel buffers (a few MB on the
    /// loopback) must fill before its client counts as not reading.
    const MSG_BYTES: usize = 3000;
    /// If the slow socket is still a member after this many messages (64 MB), the test fails.
    const MAX_MESSAGES: usize = 64 * 1024 * 1024 / MSG_BYTES;
    let redis = Redis::start("slow");
    let small = |config: &mut chitchat::Config| {
        config.redis_url = Some(redis.url());
        config.send_queue_len = 16;
        config.history_len = 4;
        config.msgs_per_second = 0;
    };
    let (a, b) = (TestServer::start_with(small), TestServer::start_with(small));
    let mut slow = b.ws("/chats/1/ws");
    slow.join("slow");
    let mut reader = b.ws("/chats/1/ws");
    reader.join("reader");
    let mut flooder = a.ws("/chats/1/ws");
    flooder.join("flooder");
    reader.next_event_where("flooder's join", |e| e["name"] == "flooder");
    let mut said = Vec::new();
    let mut heard = Vec::new();
    let mut slow_left = false;
    while !slow_left {
        assert!(
            said.len() < MAX_MESSAGES,
            "the slow socket was never closed"
        );
        for _ in 0..WINDOW {
            let msg = format!("{} {}", said.len(), "x".repeat(MSG_BYTES));
            flooder.say(&msg);
            said.push(msg);
        }
        let last = said.last().unwrap().clone();
        // The flooder reads its own messages too, or node A would close it as slow.
        flooder.next_event_where("the flooder's last message", |e| e["msg"] == last.as_str());
        loop {
            let event = reader.next_event_where("the flood", |e| e["event_type"] != "join");
            slow_left |= event["event_type"] == "leave" && event["name"] == "slow";
            if event["event_type"] == "send" {
                heard.push(event["msg"].as_str().unwrap().to_owned());
            }
            if event["msg"] == last.as_str() {
                break;
            }
        }
    }
    assert!(
        heard == said,
        "the reader on B missed or reordered messages"
    );
    assert_eq!(slow.expect_close(), 1008);
    assert_eq!(usernames(&a.get("/chats/1").json()), ["flooder", "reader"]);
}

/// A node taken for dead while it still runs (its heartbeat key gone, as after a long
/// pause): the other node reaps its members and broadcasts each leave once; the node itself
/// finds out at its next heartbeat, closes its sockets with 1012, and serves again.
#[test]
fn a_node_taken_for_dead_closes_its_sockets_and_serves_again() {
    let redis = Redis::start("dead");
    let (a, b) = two_nodes(&redis);
    let mut ann = a.ws("/chats/1/ws");
    ann.join("ann");
    let mut bob = b.ws("/chats/1/ws");
    bob.join("bob");
    ann.next_event_where("bob's join", |e| e["name"] == "bob");
    // The heartbeat key of the node that holds bob: the one whose members hash names him.
    let alive = redis
        .cli(&["--scan", "--pattern", "chitchat:node:*:members"])
        .lines()
        .find(|key| redis.cli(&["HKEYS", key]).contains("1:bob"))
        .expect("bob's node holds him")
        .replace(":members", ":alive");
    assert_eq!(redis.cli(&["DEL", &alive]).trim(), "1");
    let leave = ann.next_event_where("bob's leave", |e| e["event_type"] == "leave");
    assert_eq!(leave["name"], "bob");
    assert_eq!(bob.expect_close(), 1012);
    wait_until("node B healthy again", TIMEOUT, || {
        b.get("/healthz").status == 200
    });
    let mut bob = b.ws("/chats/1/ws");
    bob.join("bob");
    let next = ann.next_event();
    assert_eq!(
        (&next["event_type"], &next["name"]),
        (&json!("join"), &json!("bob"))
    );
}

// -----------------------------------------------------------------------------------------
// One seam: both backends answer the same questions

/// `/metrics` shows the rooms and joined names that exist, on a Redis node as on a SQLite
/// node (a Redis node showed `chitchat_rooms 0` and `chitchat_users_joined 0`: it counted
/// an index only the one-node map fills). A socket that has not joined is not counted.
#[test]
fn metrics_count_the_real_rooms_and_users_on_a_redis_node_and_a_sqlite_node() {
    let redis = Redis::start("metrics");
    let clustered = node(&redis, Duration::from_secs(15));
    let single = TestServer::start();
    for server in [&clustered, &single] {
        server.create_room("second room", "public", None);
        server.create_room("third room", "private", Some(PASSWORD));
        let mut ann = server.ws("/chats/1/ws");
        ann.join("ann");
        let mut bob = server.ws("/chats/1/ws");
        bob.join("bob");
        let _watcher = server.ws("/chats/1/ws");
        wait_until("both joins in users", TIMEOUT, || {
            usernames(&server.get("/chats/1").json()).len() == 2
        });
        let scrape = Scrape::parse(&server.get("/metrics").body);
        assert_eq!(scrape.value("chitchat_rooms", &[]), 3.0);
        assert_eq!(scrape.value("chitchat_users_joined", &[]), 2.0);
        assert_eq!(scrape.value("chitchat_sockets_open", &[]), 3.0);
    }
}

/// A node stopped for 2 s (SIGSTOP: a debugger, Ctrl-Z) and continued keeps its sockets:
/// the interrupted read on its subscription (EINTR) is not a lost Redis. Its members still
/// chat with the other node's, and nothing was closed for the backend.
#[test]
fn a_node_stopped_and_continued_keeps_its_sockets() {
    let redis = Redis::start("stop-continue");
    let other = node(&redis, Duration::from_secs(15));
    let scratch = Scratch::new("cluster-stop");
    let config = json!({
        "address": "127.0.0.1:0", "ws_address": "127.0.0.1:0", "log_file": null,
        "log_level": "warn", "bcrypt_cost": 4, "secret_key": test_config().secret_key,
        "redis_url": redis.url(),
    });
    let mut stopped = Binary::spawn_with_config(&scratch, &config, &[]);
    let (http, ws) = stopped.ready();
    let mut ann = ws_connect(ws, "/chats/1/ws");
    ann.join("ann");
    let mut bob = other.ws("/chats/1/ws");
    bob.join("bob");
    ann.next_event_where("bob's join", |e| e["name"] == "bob");
    stopped.signal("STOP");
    // The stop itself is what is tested: the process is frozen for this long.
    std::thread::sleep(Duration::from_secs(2));
    stopped.signal("CONT");
    for round in 0..3 {
        bob.say(&format!("after the stop {round}"));
        let heard = ann.next_event_where("bob's message", |e| {
            e["event_type"] == "send" && e["name"] == "bob"
        });
        assert_eq!(heard["msg"], json!(format!("after the stop {round}")));
        ann.say(&format!("ann answers {round}"));
        bob.next_event_where("ann's answer", |e| {
            e["name"] == "ann" && e["event_type"] == "send"
        });
    }
    let scrape = Scrape::parse(&http_request(http, "GET", "/metrics", &[], None).body);
    assert_eq!(
        scrape.value("chitchat_sockets_closed_total", &[("reason", "backend")]),
        0.0
    );
    assert_eq!(scrape.value("chitchat_backend_up", &[]), 1.0);
}

/// `max_rooms` holds for the whole chat: the count is checked in the same Redis script
/// that creates the room, so two nodes cannot pass it together. Paging works on a Redis
/// node as on one node.
#[test]
fn max_rooms_and_paging_hold_across_nodes() {
    let redis = Redis::start("max-rooms");
    let url = redis.url();
    let start = || {
        let url = url.clone();
        TestServer::start_with(move |config| {
            config.redis_url = Some(url);
            config.max_rooms = 3;
        })
    };
    let (a, b) = (start(), start());
    a.create_room("on node a", "public", None);
    b.create_room("on node b", "public", None);
    for server in [&a, &b] {
        let refused = server.post(
            "/chats",
            &json!({"title": "one too many", "visibility": "public"}),
        );
        assert_eq!(refused.status, 503);
        assert_eq!(refused.json(), error_body(606, None));
    }
    let page = b.get("/chats?after=1&limit=1").json();
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["title"], json!("on node a"));
}
