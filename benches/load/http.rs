//! A minimal HTTP/1.1 client over one keep-alive connection, and a `wrk` runner.
//!
//! The generator's own client is used when `wrk` is not installed and for every request
//! that is not the REST throughput run (creating rooms, asking for tokens, timing GETs
//! under token load). It writes one request at a time and reads exactly one response
//! (Content-Length, chunked, or until close), so a connection can be reused for the next
//! request the way a browser or `wrk` reuses it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::Res;

/// How long one response may take before the request counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// One keep-alive connection to the REST listener, reopened after an error or a close.
pub struct HttpClient {
    addr: SocketAddr,
    /// The local address connections are made from; `None`: the kernel's choice.
    from: Option<std::net::IpAddr>,
    conn: Option<BufReader<TcpStream>>,
}

/// A response: status and body.
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Res<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

impl HttpClient {
    /// A client for `addr`; it connects on first use.
    pub fn new(addr: SocketAddr) -> HttpClient {
        HttpClient {
            addr,
            from: None,
            conn: None,
        }
    }

    /// A client for `addr` whose connections come from the local address `from` (another
    /// client address on loopback: see `ws::tcp_from`).
    pub fn new_from(addr: SocketAddr, from: std::net::IpAddr) -> HttpClient {
        HttpClient {
            from: Some(from),
            ..HttpClient::new(addr)
        }
    }

    /// Sends one request and reads its response. On any error the connection is dropped,
    /// so the next request starts on a fresh one.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Res<Response> {
        self.request_with(method, path, body, &[])
    }

    /// [`HttpClient::request`] with extra request headers (name, value).
    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Res<Response> {
        let result = self.try_request(method, path, body, headers);
        if result.is_err() {
            self.conn = None;
        }
        result.map_err(|e| {
            let timed_out = e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            });
            if timed_out {
                format!(
                    "{method} {path}: no response within {} s",
                    RESPONSE_TIMEOUT.as_secs()
                )
                .into()
            } else {
                e
            }
        })
    }

    /// `GET path`.
    pub fn get(&mut self, path: &str) -> Res<Response> {
        self.request("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&mut self, path: &str, json: &serde_json::Value) -> Res<Response> {
        self.request("POST", path, Some(&json.to_string()))
    }

    /// Opens the connection now if it is not open, so a timed request does not include
    /// the TCP handshake.
    pub fn connect(&mut self) -> Res<&mut BufReader<TcpStream>> {
        if self.conn.is_none() {
            let stream = match self.from {
                None => TcpStream::connect(self.addr)?,
                Some(from) => crate::ws::tcp_from(from, self.addr)?,
            };
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
            self.conn = Some(BufReader::new(stream));
        }
        self.conn.as_mut().ok_or_else(|| "no connection".into())
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Res<Response> {
        let addr = self.addr;
        let conn = self.connect()?;
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            request.push_str("Content-Type: application/json\r\n");
            request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        } else {
            request.push_str("\r\n");
        }
        conn.get_mut().write_all(request.as_bytes())?;
        let (response, close) = read_response(conn)?;
        if close {
            self.conn = None;
        }
        Ok(response)
    }
}

/// `GET /metrics` as (series with its labels, value) pairs, e.g.
/// `("chitchat_limit_refusals_total{limit=\"token\"}", 3.0)`; `None` when the server does
/// not serve it (an older server answers 404).
pub fn scrape_metrics(addr: SocketAddr) -> Res<Option<Vec<(String, f64)>>> {
    let response = HttpClient::new(addr).get("/metrics")?;
    if response.status != 200 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&response.body);
    let series = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.trim().rsplit_once(' ')?;
            Some((name.trim().to_string(), value.parse().ok()?))
        })
        .collect();
    Ok(Some(series))
}

/// The sum of every series in `metrics` whose name (before any `{`) is `name` and whose
/// labels contain `label` (`""`: any).
pub fn metric_sum(metrics: &[(String, f64)], name: &str, label: &str) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name) && series.contains(label))
        .map(|(_, value)| value)
        .sum()
}

/// Reads one response; the flag says whether the server will close the connection.
fn read_response(conn: &mut BufReader<TcpStream>) -> Res<(Response, bool)> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err("connection closed before a response".into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err("connection closed inside the headers".into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.parse::<usize>()?),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            if size == 0 {
                // Trailers, if any, end with an empty line.
                loop {
                    line.clear();
                    if conn.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            conn.read_exact(&mut crlf)?;
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        conn.read_exact(&mut body)?;
    } else {
        conn.read_to_end(&mut body)?;
        close = true;
    }
    Ok((Response { status, body }, close))
}

/// What `wrk --latency` reports.
#[derive(Debug, Default)]
pub struct WrkResult {
    /// `Requests/sec:`.
    pub requests_per_second: f64,
    /// Requests completed.
    pub requests: u64,
    /// 50 % line of the latency distribution, µs.
    pub p50_us: u64,
    /// 99 % line of the latency distribution, µs.
    pub p99_us: u64,
    /// Max column of the `Latency` line, µs.
    pub max_us: u64,
    /// Avg column of the `Latency` line, µs.
    pub mean_us: u64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

/// Whether `wrk` is on the PATH.
pub fn wrk_available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// The `wrk` command line for `url`.
pub fn wrk_args(threads: usize, connections: usize, seconds: u64, url: &str) -> Vec<String> {
    vec![
        format!("-t{threads}"),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--latency".to_string(),
        url.to_string(),
    ]
}

/// Runs `wrk` with `args` and parses its report.
pub fn run_wrk(args: &[String]) -> Res<WrkResult> {
    let out = Command::new("wrk").args(args).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("wrk failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Res<WrkResult> {
    let mut result = WrkResult::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Latency", avg, _stdev, max, ..] => {
                result.mean_us = wrk_duration_us(avg)?;
                result.max_us = wrk_duration_us(max)?;
            }
            ["50%", value] => result.p50_us = wrk_duration_us(value)?,
            ["99%", value] => result.p99_us = wrk_duration_us(value)?,
            ["Requests/sec:", value] => result.requests_per_second = value.parse()?,
            [requests, "requests", "in", ..] => result.requests = requests.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => result.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                for word in rest {
                    if let Ok(n) = word.trim_end_matches(',').parse::<u64>() {
                        result.errors += n;
                    }
                }
            }
            _ => {}
        }
    }
    if result.requests == 0 {
        return Err(format!("could not read wrk's report:\n{text}").into());
    }
    Ok(result)
}

/// `812.00us`, `1.23ms`, `2.00s`, `1.5m` as microseconds.
fn wrk_duration_us(text: &str) -> Res<u64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or("no unit")?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return Err(format!("unknown wrk unit in {text:?}").into()),
    };
    Ok((number * scale).round() as u64)
}
