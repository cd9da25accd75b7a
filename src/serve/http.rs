//! The HTTP side: routes, limits, the page's files, the event stream.

use super::{api, draw, State};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response};

/// The largest request body read (a drawing, an uploaded image); more is refused with 413.
pub const MAX_BODY: usize = 8 << 20;

const INDEX: &str = include_str!("page/index.html");
const APP: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// The page, its script and style sheet named with a hash of their content, so a browser
/// never runs a cached script of an older convnet.
fn index() -> String {
    use sha2::{Digest, Sha256};
    let version = |text: &str| crate::data::fetch::hex(&Sha256::digest(text.as_bytes())[..6]);
    INDEX
        .replace("/app.js", &format!("/app.js?v={}", version(APP)))
        .replace("/style.css", &format!("/style.css?v={}", version(STYLE)))
}

/// A handler's answer: a status and a body with its type.
pub struct Reply {
    pub status: u16,
    pub kind: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            kind: "application/json",
            body: serde_json::to_vec(v).unwrap_or_default(),
        }
    }
    /// An error the page shows: `{"error": msg}`.
    pub fn error(status: u16, msg: impl Into<String>) -> Reply {
        Reply::json(status, &json!({"error": msg.into()}))
    }
    fn file(kind: &'static str, text: &str) -> Reply {
        Reply {
            status: 200,
            kind,
            body: text.as_bytes().to_vec(),
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

/// `a%2Fb+c` -> `a/b c`; `None` for a broken escape or text that is not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A request's path and query parameters.
pub struct Query {
    pub path: String,
    params: Vec<(String, String)>,
}

impl Query {
    fn parse(url: &str) -> Option<Query> {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let params = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Some((decode(k)?, decode(v)?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Query {
            path: decode(path)?,
            params,
        })
    }

    /// A parameter, or a 400 naming it.
    pub fn get(&self, key: &str) -> Result<&str, Reply> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| Reply::error(400, format!("the query needs `{key}`")))
    }

    /// A parameter, or `default`.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }
}

/// Whether the request is for this server by a name a browser on this machine (or at the
/// end of an ssh tunnel) would use, not for another site's name resolving here.
fn host_allowed(request: &Request) -> bool {
    let Some(host) = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str().to_string())
    else {
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("").to_string()
    } else {
        host.rsplit_once(':')
            .map_or(host.as_str(), |(h, _)| h)
            .to_string()
    };
    matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
        || name.parse::<std::net::IpAddr>().is_ok()
}

/// Every path served, for telling a wrong method (405) from a wrong path (404).
const ROUTES: &[&str] = &[
    "/",
    "/index.html",
    "/app.js",
    "/style.css",
    "/favicon.ico",
    "/api/runs",
    "/api/metrics",
    "/api/steps",
    "/api/sweep",
    "/api/model",
    "/api/evaluation",
    "/api/images",
    "/api/draw",
    "/api/events",
];

/// Answers one request.
pub fn handle(state: &State, mut request: Request) {
    if !host_allowed(&request) {
        return send(request, Reply::error(403, "unknown host name"));
    }
    let Some(query) = Query::parse(request.url()) else {
        return send(request, Reply::error(400, "the URL has a broken %-escape"));
    };
    let method = request.method().clone();
    if method == Method::Get && query.path == "/api/events" {
        return stream_events(state, request);
    }
    let reply = match (&method, query.path.as_str()) {
        (Method::Get, "/" | "/index.html") => Reply::file("text/html; charset=utf-8", &index()),
        (Method::Get, "/app.js") => Reply::file("text/javascript; charset=utf-8", APP),
        (Method::Get, "/style.css") => Reply::file("text/css; charset=utf-8", STYLE),
        (Method::Get, "/favicon.ico") => Reply {
            status: 204,
            kind: "image/x-icon",
            body: Vec::new(),
        },
        (Method::Get, "/api/runs") => api::runs(state),
        (Method::Get, "/api/metrics") => api::metrics(state, &query),
        (Method::Get, "/api/steps") => api::steps(state, &query),
        (Method::Get, "/api/sweep") => api::sweep(state, &query),
        (Method::Get, "/api/model") => api::model(state, &query),
        (Method::Get, "/api/evaluation") => api::evaluation(state, &query),
        (Method::Get, "/api/images") => api::images(state, &query),
        (Method::Post, "/api/draw") => match read_body(&mut request) {
            Ok(body) => {
                let kind = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Content-Type"))
                    .map(|h| h.value.as_str().to_string())
                    .unwrap_or_default();
                draw::draw(state, &query, &kind, &body)
            }
            Err(reply) => reply,
        },
        (_, p) if ROUTES.contains(&p) => {
            Reply::error(405, format!("{} is not allowed on {p}", method.as_str()))
        }
        (_, p) => Reply::error(404, format!("{p}: no such page")),
    };
    send(request, reply);
}

/// The request body, refused past `MAX_BODY`.
fn read_body(request: &mut Request) -> Result<Vec<u8>, Reply> {
    if request.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(Reply::error(
            413,
            format!("the body is larger than {} MB", MAX_BODY >> 20),
        ));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Reply::error(400, format!("the body could not be read: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(Reply::error(
            413,
            format!("the body is larger than {} MB", MAX_BODY >> 20),
        ));
    }
    Ok(body)
}

fn send(request: Request, reply: Reply) {
    let cache = if reply.kind.starts_with("application/json") {
        "no-store"
    } else {
        "no-cache"
    };
    let response = Response::from_data(reply.body)
        .with_status_code(reply.status)
        .with_header(header("Content-Type", reply.kind))
        .with_header(header("Cache-Control", cache))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'",
        ));
    let _ = request.respond(response);
}

/// `/api/events`: server-sent events, written straight to the connection and flushed one by
/// one (a body of unknown length ends when the connection closes).
fn stream_events(state: &State, request: Request) {
    if state.open_streams.fetch_add(1, Ordering::SeqCst) >= super::MAX_STREAMS {
        state.open_streams.fetch_sub(1, Ordering::SeqCst);
        return send(request, Reply::error(503, "too many open event streams"));
    }
    let (tx, rx) = mpsc::channel::<String>();
    if let Ok(mut s) = state.streams.lock() {
        s.push(tx);
    }
    let mut out = request.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
                Connection: close\r\nX-Content-Type-Options: nosniff\r\n\r\nretry: 2000\n\n";
    let mut ok = out
        .write_all(head.as_bytes())
        .and_then(|_| out.flush())
        .is_ok();
    let mut idle = 0;
    while ok && !state.stopping.load(Ordering::SeqCst) {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(text) => {
                idle = 0;
                ok = out
                    .write_all(text.as_bytes())
                    .and_then(|_| out.flush())
                    .is_ok();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A comment now and then finds closed connections and keeps proxies open.
                idle += 1;
                if idle >= 30 {
                    idle = 0;
                    ok = out
                        .write_all(b": keep-alive\n\n")
                        .and_then(|_| out.flush())
                        .is_ok();
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    state.open_streams.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_their_escapes() {
        let q = Query::parse("/api/model?run=0%2Fsweep%2Flr%3D0.1&file=best").unwrap();
        assert_eq!(q.path, "/api/model");
        assert_eq!(q.get("run").ok(), Some("0/sweep/lr=0.1"));
        assert_eq!(q.get_or("file", "model"), "best");
        assert!(q.get("nope").is_err());
        assert!(Query::parse("/api/x?run=%zz").is_none());
        assert!(Query::parse("/api/x?run=%e2%82").is_none(), "not UTF-8");
        assert_eq!(decode("a+b%20c").as_deref(), Some("a b c"));
    }
}
