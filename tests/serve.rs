//! `convnet serve` against the real server on 127.0.0.1, without a browser: what it serves
//! and what it refuses, live events, a corrupt model, folders that come and go, 50 clients
//! at once, Ctrl-C, and that it never writes into a run folder. Every loop is bounded in
//! requests and in time. Uses a tiny data set written on the spot, no downloads.

mod common;
use common::{fake_mnist, offline, text, BIN};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A trained seed-cnn run (one epoch on 64 fake images) and its data, made once per test
/// binary; tests copy the run into folders of their own.
struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    run: PathBuf,
    /// The same network trained on a fake Fashion-MNIST.
    fashion: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fake_mnist(&data.join("mnist"), 64);
        fake_mnist(&data.join("fashion-mnist"), 64);
        let train = |name: &str, dataset: &str| {
            let run = dir.path().join(name);
            let o = offline(
                &data,
                &[
                    "train",
                    "--dataset",
                    dataset,
                    "--epochs",
                    "2",
                    "--val-size",
                    "16",
                    "--seed",
                    "3",
                    "--no-plot",
                    "--out",
                    run.to_str().unwrap(),
                ],
            );
            assert!(o.status.success(), "{}", text(&o).1);
            run
        };
        let (run, fashion) = (train("trained", "mnist"), train("fashion", "fashion-mnist"));
        Fixture {
            _dir: dir,
            data,
            run,
            fashion,
        }
    })
}

/// Copies the trained run into `dest` (a new folder).
fn copy_run(dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(&fixture().run).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
}

/// A `convnet serve` process on a free port of 127.0.0.1, stopped when dropped.
struct Server {
    child: Child,
    addr: String,
    /// What it printed, read by a thread so the pipe never fills.
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .args(["--port", "0", "--data"])
            .arg(&fixture().data)
            .env("XDG_CACHE_HOME", fixture().data.join("no-cache"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = match lines.next() {
            Some(Ok(l)) => l,
            _ => {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("the server printed nothing: {err}");
            }
        };
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("no URL in `{first}`"))
            .to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{first}");
        let out = std::sync::Arc::new(std::sync::Mutex::new(first + "\n"));
        let sink = out.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        Server { child, addr, out }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET: (status, body).
    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        reply(ureq::get(&self.url(path)).call())
    }

    /// GET of JSON, which must answer 200.
    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    fn post(&self, path: &str, kind: &str, body: &[u8]) -> (u16, Vec<u8>) {
        reply(
            ureq::post(&self.url(path))
                .set("Content-Type", kind)
                .send_bytes(body),
        )
    }

    /// Waits (at most 10 s) until `/api/runs` satisfies `cond`.
    fn wait_runs(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let runs = self.json("/api/runs");
            if cond(&runs) {
                return runs;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{what}: {runs}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A status and a body.
type Answer = (u16, Vec<u8>);

fn reply(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("no answer: {e}"),
    };
    let status = resp.status();
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).unwrap();
    (status, body)
}

/// The `error` of a JSON error answer.
fn error_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    v["error"].as_str().unwrap_or_default().to_string()
}

/// Sends raw bytes and reads the answer to the end: (status, head, body).
fn raw(addr: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (413) before taking the whole body, and close.
    let _ = s.write_all(request);
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head in {:?}", String::from_utf8_lossy(&all)));
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, head, all[split + 4..].to_vec())
}

/// The ids of the runs `/api/runs` lists.
fn run_ids(runs: &Value) -> Vec<String> {
    runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_page_is_self_contained_small_and_offline() {
    let root = tempfile::tempdir().unwrap();
    let s = Server::start(&[root.path().to_str().unwrap()]);
    let (status, page) = s.get("/");
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    // Every file the page loads, by the names in it.
    let mut assets = vec![page.clone()];
    for name in ["/app.js?v=", "/style.css?v="] {
        let at = page
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {page}"));
        let end = page[at..].find('"').unwrap() + at;
        let (status, body) = s.get(&page[at..end]);
        assert_eq!(status, 200, "{}", &page[at..end]);
        assets.push(String::from_utf8(body).unwrap());
    }
    let total: usize = assets.iter().map(String::len).sum();
    assert!(total <= 500 << 10, "the page's own files are {total} bytes");
    for a in &assets {
        // Nothing from elsewhere: the only URL is the SVG name space, which loads nothing.
        let outside = a
            .replace("http://www.w3.org/2000/svg", "")
            .replace("http://www.w3.org/1999/xlink", "");
        for needle in ["http://", "https://", "//cdn", "@import", "fonts.g"] {
            assert!(!outside.contains(needle), "`{needle}` in a page file");
        }
    }
    let (_, head, _) = raw(
        &s.addr,
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.addr
        )
        .as_bytes(),
    );
    assert!(
        head.contains("Content-Security-Policy: default-src 'self'"),
        "{head}"
    );
}

#[test]
fn nothing_outside_the_served_folders_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    copy_run(&root.join("mine"));
    copy_run(&outside.join("secret"));
    // A link to a run folder outside, and a run whose model is a link to a file outside.
    std::os::unix::fs::symlink(outside.join("secret"), root.join("linked")).unwrap();
    copy_run(&root.join("half"));
    std::fs::remove_file(root.join("half/model.safetensors")).unwrap();
    std::os::unix::fs::symlink(
        outside.join("secret/model.safetensors"),
        root.join("half/model.safetensors"),
    )
    .unwrap();
    let s = Server::start(&[root.to_str().unwrap()]);
    let runs = s.json("/api/runs");
    assert_eq!(run_ids(&runs), ["0/half", "0/mine"], "{runs}");
    assert!(s.json("/api/model?run=0/mine")["kernels"].is_array());
    let (status, body) = s.get("/api/model?run=0/half");
    assert_eq!(status, 422, "a linked model file is not read");
    assert!(
        error_of(&body).contains("not a regular file"),
        "{}",
        error_of(&body)
    );
    for path in [
        "/api/model?run=0/linked",
        "/api/model?run=0/../outside/secret",
        "/api/model?run=0%2F..%2F..%2Foutside%2Fsecret",
        "/api/metrics?run=/etc",
        "/api/metrics?run=0/mine/..",
        "/api/sweep?id=0/..",
        "/api/sweep?id=/",
        "/..%2F..%2Fetc%2Fpasswd",
        "/../../etc/passwd",
    ] {
        let (status, body) = s.get(path);
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
    }
    let (status, body) = s.get("/api/model?run=0/mine&file=../../outside/secret/model");
    assert_eq!(status, 400, "{}", error_of(&body));
    let (status, body) = s.get("/api/images?dataset=../../etc&indices=0");
    assert_eq!(status, 400, "{}", error_of(&body));
    // Raw paths a client library would tidy up.
    for target in [
        "/../../../etc/passwd",
        "/api/../../etc/passwd",
        "//etc/passwd",
    ] {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.addr
        );
        let (status, _, body) = raw(&s.addr, req.as_bytes());
        assert_eq!(status, 404, "{target}");
        assert!(
            !String::from_utf8_lossy(&body).contains("root:"),
            "{target}"
        );
    }
}

#[test]
fn bad_requests_get_their_status_and_a_reason() {
    let root = tempfile::tempdir().unwrap();
    copy_run(&root.path().join("r"));
    let s = Server::start(&[root.path().to_str().unwrap()]);
    let draw = "/api/draw?run=0/r";
    // (the status wanted, words the reason must hold, the answer)
    let cases: Vec<(u16, &str, Answer)> = vec![
        (404, "no run", s.get("/api/metrics?run=0/nope")),
        (400, "needs `run`", s.get("/api/metrics")),
        (400, "%-escape", s.get("/api/metrics?run=%zz")),
        (
            400,
            "`file` is model or best",
            s.get("/api/model?run=0/r&file=x"),
        ),
        (400, "whole numbers", s.get("/api/images?indices=1,x")),
        (404, "no such page", s.get("/nope")),
        (
            405,
            "not allowed",
            reply(ureq::delete(&s.url("/api/runs")).call()),
        ),
        (405, "not allowed", s.post("/api/runs", "text/plain", b"x")),
        (
            400,
            "not the JSON expected",
            s.post(draw, "application/json", b"{\"width\":"),
        ),
        (
            400,
            "not the JSON expected",
            s.post(
                draw,
                "application/json",
                b"{\"width\":100,\"height\":100,\"strokes\":[[[\"a\",1]]]}",
            ),
        ),
        (
            422,
            "nothing is drawn",
            s.post(
                draw,
                "application/json",
                b"{\"width\":100,\"height\":100,\"strokes\":[[]]}",
            ),
        ),
        (
            400,
            "8 to 2048 pixels",
            s.post(
                draw,
                "application/json",
                b"{\"width\":100000,\"height\":100,\"strokes\":[[[1,1]]]}",
            ),
        ),
        (
            422,
            "is not an image",
            s.post(draw, "image/png", b"\x89PNG not really"),
        ),
    ];
    for (want, needle, (status, body)) in cases {
        let msg = error_of(&body);
        assert_eq!(status, want, "{needle}: {msg}");
        assert!(msg.contains(needle), "`{needle}` not in `{msg}`");
    }
    // An image with no ink gets a message, not a prediction.
    let mut png = Vec::new();
    image::GrayImage::from_pixel(64, 64, image::Luma([255]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (status, body) = s.post(draw, "image/png", &png);
    assert_eq!(status, 422);
    assert!(error_of(&body).contains("no ink"), "{}", error_of(&body));

    // Bodies over 8 MB: announced (refused before reading) or streamed (cut off at the cap).
    let big = format!(
        "POST {draw} HTTP/1.1\r\nHost: {}\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        s.addr,
        9 << 20
    );
    let (status, _, body) = raw(&s.addr, big.as_bytes());
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(error_of(&body).contains("larger than 8 MB"));
    let mut chunked = format!(
        "POST {draw} HTTP/1.1\r\nHost: {}\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        s.addr
    )
    .into_bytes();
    let piece = vec![b'x'; 1 << 20];
    for _ in 0..9 {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(&piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, _, body) = raw(&s.addr, &chunked);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));

    // Another site's name resolving to this machine (DNS rebinding) is refused.
    let req = format!(
        "GET /api/runs HTTP/1.1\r\nHost: evil.example:{}\r\nConnection: close\r\n\r\n",
        80
    );
    let (status, _, _) = raw(&s.addr, req.as_bytes());
    assert_eq!(status, 403);
    // Not HTTP at all: the connection is answered or closed, and the server carries on.
    let (status, _, _) = raw(&s.addr, b"\x16\x03\x01 hello\r\n\r\n");
    assert_eq!(status, 400);
    assert_eq!(s.json("/api/runs")["runs"].as_array().unwrap().len(), 1);
}

#[test]
fn a_corrupt_or_half_written_model_is_an_error_and_the_server_stays_up() {
    let root = tempfile::tempdir().unwrap();
    copy_run(&root.path().join("good"));
    copy_run(&root.path().join("bad"));
    let model = root.path().join("bad/model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let mut flipped = std::fs::read(root.path().join("good/best.safetensors")).unwrap();
    let n = flipped.len();
    flipped[n - 5] ^= 0x40;
    std::fs::write(root.path().join("bad/best.safetensors"), &flipped).unwrap();
    let s = Server::start(&[root.path().to_str().unwrap()]);
    let stroke = br#"{"width":280,"height":280,"strokes":[[[140,40],[140,240]]]}"#;
    for (path, needle) in [
        ("/api/model?run=0/bad", "model.safetensors"),
        ("/api/model?run=0/bad&file=best", "checksum"),
        ("/api/evaluation?run=0/bad", "model.safetensors"),
    ] {
        let (status, body) = s.get(path);
        assert_eq!(status, 422, "{path}");
        assert!(
            error_of(&body).contains(needle),
            "{path}: {}",
            error_of(&body)
        );
    }
    let (status, _) = s.post("/api/draw?run=0/bad", "application/json", stroke);
    assert_eq!(status, 422);
    // The good run next to it is untouched, and a repaired file is read again.
    assert_eq!(
        s.post("/api/draw?run=0/good", "application/json", stroke).0,
        200
    );
    std::fs::write(&model, &bytes).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&model)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(
        s.post("/api/draw?run=0/bad", "application/json", stroke).0,
        200
    );
}

#[test]
fn run_folders_appearing_and_vanishing_are_followed() {
    let root = tempfile::tempdir().unwrap();
    let s = Server::start(&[root.path().to_str().unwrap()]);
    assert!(run_ids(&s.json("/api/runs")).is_empty());
    copy_run(&root.path().join("sweep/lr=0.1"));
    copy_run(&root.path().join("sweep/lr=0.01"));
    std::fs::write(
        root.path().join("sweep/sweep.csv"),
        "trial,lr,status,best_val_acc,test_acc,epochs,seconds\nlr=0.1,0.1,done,0.5,0.5,2,1\nlr=0.01,0.01,done,0.4,0.4,2,1\n",
    )
    .unwrap();
    let runs = s.wait_runs("two trials appear", |r| run_ids(r).len() == 2);
    assert_eq!(runs["sweeps"][0]["id"], "0/sweep", "{runs}");
    assert_eq!(runs["runs"][0]["status"], "finished", "{runs}");
    std::fs::remove_dir_all(root.path().join("sweep/lr=0.1")).unwrap();
    s.wait_runs("a trial vanishes", |r| run_ids(r) == ["0/sweep/lr=0.01"]);
    let (status, _) = s.get("/api/metrics?run=0/sweep/lr=0.1");
    assert_eq!(status, 404);
    std::fs::remove_dir_all(root.path().join("sweep")).unwrap();
    s.wait_runs("the sweep vanishes", |r| {
        run_ids(r).is_empty() && r["sweeps"].as_array().unwrap().is_empty()
    });
}

/// Reads server-sent events from a raw connection until `want` returns true for one, or
/// the deadline passes; returns the time it took.
fn wait_event(
    stream: &mut BufReader<TcpStream>,
    deadline: Duration,
    want: impl Fn(&str, &Value) -> bool,
) -> Duration {
    let start = Instant::now();
    let (mut name, mut line) = (String::new(), String::new());
    while start.elapsed() < deadline {
        line.clear();
        match stream.read_line(&mut line) {
            Ok(0) => panic!("the event stream closed"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => panic!("{e}"),
        }
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(d.trim()).unwrap();
            if want(&name, &v) {
                return start.elapsed();
            }
        }
    }
    panic!("no such event within {deadline:?}");
}

fn open_events(addr: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(s, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let start = Instant::now();
    // Through the head.
    while line != "\r\n" {
        line.clear();
        if r.read_line(&mut line).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "no stream head");
        }
        if line.starts_with("HTTP/") {
            assert!(line.contains(" 200 "), "{line}");
        }
    }
    r
}

#[test]
fn a_line_appended_to_a_live_log_reaches_an_open_page_within_2_s() {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("live");
    copy_run(&run);
    // A run still training: no final model yet.
    std::fs::remove_file(run.join("model.safetensors")).unwrap();
    let s = Server::start(&[root.path().to_str().unwrap()]);
    let before = s.json("/api/metrics?run=0/live")["rows"]
        .as_array()
        .unwrap()
        .len();
    let mut events = open_events(&s.addr);
    // Give the watcher a look at the files as they are.
    std::thread::sleep(Duration::from_millis(900));
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let last = metrics.lines().last().unwrap();
    let mut fields: Vec<String> = last.split(',').map(String::from).collect();
    fields[0] = (before + 1).to_string();
    fields[3] = "0.123456".into();
    let mut f = std::fs::File::options()
        .append(true)
        .open(run.join("metrics.csv"))
        .unwrap();
    writeln!(f, "{}", fields.join(",")).unwrap();
    drop(f);
    let took = wait_event(&mut events, Duration::from_secs(2), |name, v| {
        name == "metrics"
            && v["id"] == "0/live"
            && v["rows"][0]["epoch"] == before as u64 + 1
            && v["rows"][0]["train_loss"].as_f64() == Some(0.123456)
    });
    eprintln!("metrics event after {took:?}");
    let steps = run.join("steps.csv");
    let n = std::fs::read_to_string(&steps).unwrap().lines().count();
    let mut f = std::fs::File::options().append(true).open(&steps).unwrap();
    writeln!(f, "{n},3,0.5,0.01").unwrap();
    drop(f);
    wait_event(&mut events, Duration::from_secs(2), |name, v| {
        name == "steps" && v["rows"][0][0] == n as u64 && v["rows"][0][1].as_f64() == Some(0.5)
    });
    // And the whole log, read afresh, has the new epoch too.
    assert_eq!(
        s.json("/api/metrics?run=0/live")["rows"]
            .as_array()
            .unwrap()
            .len(),
        before + 1
    );
    // A log cut back (a resume from an earlier checkpoint) tells the page to read it again.
    std::fs::write(
        run.join("metrics.csv"),
        metrics.lines().take(2).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    wait_event(&mut events, Duration::from_secs(2), |name, v| {
        name == "reset" && v["id"] == "0/live"
    });
}

#[test]
fn the_model_draw_and_evaluation_answers_match_the_command_line() {
    let f = fixture();
    let root = tempfile::tempdir().unwrap();
    copy_run(&root.path().join("r"));
    let s = Server::start(&[root.path().to_str().unwrap()]);

    // The kernels are the model file's own weights.
    let m = s.json("/api/model?run=0/r");
    let model = convnet::Model::load(f.run.join("model.safetensors")).unwrap();
    let conv_weights: Vec<Vec<f32>> = model
        .network()
        .layers()
        .filter(|l| l.kind() == convnet::nn::LayerKind::Conv2d)
        .map(|l| {
            l.params()
                .into_iter()
                .find(|p| p.role == convnet::nn::ParamRole::Weight)
                .unwrap()
                .value
                .to_vec()
        })
        .collect();
    let kernels = m["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), conv_weights.len());
    assert_eq!(kernels.len(), 2, "seed-cnn has two conv layers");
    for (k, w) in kernels.iter().zip(&conv_weights) {
        let bytes = base64_decode(k["data"].as_str().unwrap());
        let served: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(&served, w);
        let shape: usize = k["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .product();
        assert_eq!(shape, w.len());
    }
    assert_eq!(m["classes"].as_array().unwrap().len(), 10);

    // An uploaded image is prepared and classified exactly as `convnet predict` does.
    let img = image::GrayImage::from_fn(90, 120, |x, y| {
        let on = (20..70).contains(&x) && (15..25).contains(&y)
            || (x as i32 - 65 + (y as i32 - 20) / 3).abs() < 6 && y >= 20;
        image::Luma([if on { 30 } else { 235 }])
    });
    let png_path = root.path().join("seven.png");
    img.save(&png_path).unwrap();
    let (status, body) = s.post(
        "/api/draw?run=0/r",
        "image/png",
        &std::fs::read(&png_path).unwrap(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let d: Value = serde_json::from_slice(&body).unwrap();
    let o = common::convnet(&[
        "predict",
        "--model",
        f.run.to_str().unwrap(),
        "--json",
        "--top",
        "10",
        png_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let p: Value = serde_json::from_str(text(&o).0.lines().next().unwrap()).unwrap();
    let probs = d["probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 10);
    let sum: f64 = probs.iter().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "{sum}");
    for t in p["top"].as_array().unwrap() {
        let c = t["index"].as_u64().unwrap() as usize;
        let (a, b) = (
            probs[c].as_f64().unwrap(),
            t["probability"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-6, "class {c}: served {a}, predict {b}");
    }
    assert_eq!(d["steps"]["inverted"], p["inverted"]);
    assert_eq!(d["label"], p["top"][0]["index"]);
    assert_eq!(
        base64_decode(d["steps"]["final"]["pixels"].as_str().unwrap()).len(),
        28 * 28
    );
    // A feature map for every conv, ReLU and pool layer, at the layer's own shape.
    let maps = d["maps"].as_array().unwrap();
    let kinds: Vec<&str> = maps.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "conv2d",
            "relu",
            "max_pool2d",
            "conv2d",
            "relu",
            "max_pool2d"
        ]
    );
    for m in maps {
        let n: usize = m["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .product();
        assert_eq!(base64_decode(m["data"].as_str().unwrap()).len(), 4 * n);
    }
    assert!(
        maps[1]["signed"] == false && maps[0]["signed"] == true,
        "ReLU output is not signed"
    );

    // The evaluation is `convnet eval`'s, and the images behind a cell are the test set's.
    let e = s.json("/api/evaluation?run=0/r");
    let evaluated = root.path().join("copy");
    copy_run(&evaluated);
    let o = offline(
        &f.data,
        &[
            "eval",
            "--model",
            evaluated.to_str().unwrap(),
            "--json",
            "--data",
            f.data.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let cli: Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(e["correct"], cli["correct"]);
    assert_eq!(e["total"], 64);
    assert_eq!(e["confusion"], cli["confusion"]);
    let imgs = s.json("/api/images?dataset=mnist&indices=0,5");
    let want = common::idx_images(64, 28, 28);
    for (k, i) in [0usize, 5].iter().enumerate() {
        let px = base64_decode(imgs["images"][k]["pixels"].as_str().unwrap());
        assert_eq!(px, &want[16 + i * 784..16 + (i + 1) * 784]);
        assert_eq!(imgs["images"][k]["label"], (*i % 10) as u64);
    }
    let (status, _) = s.get("/api/images?indices=64");
    assert_eq!(status, 400, "past the end of the test set");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Every file under `dir` with its length, modification time and bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path(),
                    meta.len(),
                    meta.modified().unwrap(),
                    std::fs::read(e.path()).unwrap_or_default(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn fifty_clients_at_once_are_served_without_errors_and_nothing_is_written() {
    let root = tempfile::tempdir().unwrap();
    copy_run(&root.path().join("a"));
    copy_run(&root.path().join("b"));
    let before = snapshot(root.path());
    let s = Server::start(&[root.path().to_str().unwrap()]);
    // 20 open pages streaming events, 30 clients each making 20 requests: the page's
    // polls, a model, an evaluation and draws.
    let streams: Vec<_> = (0..20).map(|_| open_events(&s.addr)).collect();
    let stroke = br#"{"width":280,"height":280,"line":20,"strokes":[[[140,40],[140,240]],[[100,60],[140,40]]]}"#;
    let start = Instant::now();
    let workers: Vec<_> = (0..30)
        .map(|w| {
            let url = s.url("");
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                let mut failures = Vec::new();
                for i in 0..20 {
                    let run = if (w + i) % 2 == 0 { "0/a" } else { "0/b" };
                    let r = match i % 5 {
                        0 => agent.get(&format!("{url}/api/runs")).call(),
                        1 => agent.get(&format!("{url}/api/metrics?run={run}")).call(),
                        2 => agent
                            .get(&format!("{url}/api/model?run={run}&file=best"))
                            .call(),
                        3 if i == 3 => agent.get(&format!("{url}/api/evaluation?run={run}")).call(),
                        _ => agent
                            .post(&format!("{url}/api/draw?run={run}"))
                            .set("Content-Type", "application/json")
                            .send_bytes(stroke),
                    };
                    match r {
                        Ok(resp) if resp.status() == 200 => {
                            let mut b = Vec::new();
                            resp.into_reader().read_to_end(&mut b).unwrap();
                            if serde_json::from_slice::<Value>(&b).is_err() {
                                failures.push(format!("{i}: not JSON"));
                            }
                        }
                        Ok(resp) => failures.push(format!("{i}: {}", resp.status())),
                        Err(e) => failures.push(format!("{i}: {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    eprintln!(
        "600 requests from 30 clients with 20 streams open: {:?}, {} failed",
        start.elapsed(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    // The streams are all still open and live.
    let mut f = std::fs::File::options()
        .append(true)
        .open(root.path().join("a/steps.csv"))
        .unwrap();
    writeln!(f, "999999,9,0.25,0.01").unwrap();
    drop(f);
    for mut e in streams {
        wait_event(&mut e, Duration::from_secs(3), |name, v| {
            name == "steps" && v["rows"][0][0] == 999999
        });
    }
    // The only change in the served folders is the line this test appended.
    let after = snapshot(root.path());
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        if a.0.ends_with("a/steps.csv") {
            assert!(a.3.starts_with(&b.3));
        } else {
            assert_eq!(b, a, "{} changed", a.0.display());
        }
    }
}

#[test]
fn ctrl_c_stops_the_server_cleanly_with_streams_open() {
    let root = tempfile::tempdir().unwrap();
    let mut s = Server::start(&[root.path().to_str().unwrap()]);
    let _stream = open_events(&s.addr);
    assert_eq!(s.get("/api/runs").0, 200);
    unsafe { libc::kill(s.child.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        s.out.lock().unwrap().contains("stopped"),
        "{}",
        s.out.lock().unwrap()
    );
}

#[test]
fn serve_refuses_what_it_cannot_do_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let o = common::convnet(&["serve", missing.to_str().unwrap(), "--port", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("nope") && text(&o).1.contains("not a folder"),
        "{}",
        text(&o).1
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = common::convnet(&["serve", dir.path().to_str().unwrap(), "--port", &port]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains("cannot listen") && text(&o).1.contains("--port"),
        "{}",
        text(&o).1
    );
}

#[test]
fn a_fashion_model_gets_its_class_names_and_its_own_preparation() {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("fashion");
    std::fs::create_dir_all(&dest).unwrap();
    for e in std::fs::read_dir(&fixture().fashion).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
    copy_run(&root.path().join("digits"));
    let s = Server::start(&[root.path().to_str().unwrap()]);
    // A lopsided blob: a digit is centred by its centre of mass, a garment by its box.
    let stroke = br#"{"width":280,"height":280,"line":30,"strokes":[[[60,60],[220,60],[220,220],[60,220],[60,60]],[[70,70],[90,200],[80,80]]]}"#;
    let answer = |run: &str| -> Value {
        let (status, body) = s.post(&format!("/api/draw?run={run}"), "application/json", stroke);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    };
    let (f, d) = (answer("0/fashion"), answer("0/digits"));
    assert_eq!(f["classes"][0], "T-shirt/top");
    assert_eq!(f["classes"][9], "Ankle boot");
    assert_eq!(d["classes"][0], "0");
    let centre = |v: &Value| {
        (
            v["steps"]["centre"][0].as_f64().unwrap(),
            v["steps"]["centre"][1].as_f64().unwrap(),
        )
    };
    let box_centre = |v: &Value| {
        let sc = &v["steps"]["scaled"];
        (
            sc["w"].as_f64().unwrap() / 2.0,
            sc["h"].as_f64().unwrap() / 2.0,
        )
    };
    assert_eq!(
        centre(&f),
        box_centre(&f),
        "a garment is centred by its box"
    );
    assert_ne!(centre(&d), box_centre(&d), "a digit by its centre of mass");
    assert_eq!(
        s.json("/api/model?run=0/fashion")["dataset"],
        "fashion-mnist"
    );
}

/// A server whose stdout is closed (`convnet serve | head -1`, a page opener that reads
/// the URL and goes) keeps serving: a closed pipe ended it on its second banner line,
/// which made the browser test fail now and then with a refused connection.
#[test]
fn the_server_outlives_its_closed_stdout() {
    let root = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(BIN)
        .args(["serve", root.path().to_str().unwrap(), "--port"])
        .arg(port.to_string())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/runs");
    let start = Instant::now();
    let answered = loop {
        if let Ok(r) = ureq::get(&url).call() {
            break r.status();
        }
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("the server ended ({st}) with its stdout closed: {err}");
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no answer");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(answered, 200);
    // Still up a moment later, after everything it prints at start-up.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ureq::get(&url).call().map(|r| r.status()).ok(), Some(200));
    assert!(child.try_wait().unwrap().is_none(), "the server ended");
    let _ = child.kill();
    let _ = child.wait();
}
