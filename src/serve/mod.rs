//! `convnet serve`: a local web server for one page that shows the runs under some folders
//! (live, as they train), their sweeps and models, and what a model does with a digit drawn
//! in the page.
//!
//! It reads the folders it serves and nothing else, never writes into them, binds to
//! 127.0.0.1 unless told otherwise, refuses requests for other hosts (a page elsewhere cannot
//! reach it through DNS rebinding), caps request bodies at 8 MB and its threads at a fixed
//! number. Pages learn what changed through server-sent events: a watcher thread reads what
//! was appended to each run's logs and pushes it.
//!
//! The page itself (`page/`) is plain HTML, CSS and JavaScript embedded in the binary: no
//! build step, nothing fetched from elsewhere.

mod api;
mod draw;
mod http;
pub mod runs;

use crate::data::{DatasetKind, Splits};
use crate::model::Model;
use crate::Error;
use runs::{Entry, Watch};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How `convnet serve` runs.
pub struct Options {
    /// The folders served (runs, sweeps).
    pub roots: Vec<PathBuf>,
    /// The address to bind.
    pub host: String,
    /// The port (0: any free one).
    pub port: u16,
    /// Where the data sets are (for confusion matrices), as `--data`.
    pub data: Option<PathBuf>,
}

/// The most request handlers running at once; more wait.
const MAX_HANDLERS: usize = 64;
/// The most open event streams; more are refused (503).
const MAX_STREAMS: usize = 256;
/// How often the watcher looks at the logs.
const WATCH_EVERY: Duration = Duration::from_millis(400);

/// A model file as loaded, with the modification time it had then.
type LoadedModel = (SystemTime, Arc<Mutex<Model>>);

/// What every request handler shares.
pub(crate) struct State {
    roots: Vec<PathBuf>,
    /// The runs and sweeps found by the last scan.
    found: Mutex<(Vec<Entry>, Vec<Entry>)>,
    /// Every run's table row, from the watcher.
    summaries: Mutex<serde_json::Value>,
    /// The open event streams.
    streams: Mutex<Vec<mpsc::Sender<String>>>,
    open_streams: AtomicUsize,
    /// Loaded models by file, with the file's modification time.
    models: Mutex<HashMap<PathBuf, LoadedModel>>,
    /// Evaluations by model file and modification time.
    evaluations: Mutex<HashMap<(PathBuf, SystemTime), Arc<serde_json::Value>>>,
    /// Test sets by data set.
    splits: Mutex<HashMap<DatasetKind, Arc<Splits>>>,
    data: Option<PathBuf>,
    stopping: AtomicBool,
}

impl State {
    /// The run of that id, as last found.
    fn run(&self, id: &str) -> Option<Entry> {
        let found = self.found.lock().ok()?;
        found.0.iter().find(|e| e.id == id).cloned()
    }

    fn sweep(&self, id: &str) -> Option<Entry> {
        let found = self.found.lock().ok()?;
        found.1.iter().find(|e| e.id == id).cloned()
    }

    /// The model file of a run, loaded (and verified) once per version of the file.
    fn model(&self, path: &Path) -> Result<Arc<Mutex<Model>>, Error> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::model(path, "is not a regular file"));
        }
        let modified = meta.modified().map_err(|e| Error::io(path, e))?;
        let mut cache = self
            .models
            .lock()
            .map_err(|_| Error::Internal("model cache".into()))?;
        if let Some((when, m)) = cache.get(path) {
            if *when == modified {
                return Ok(m.clone());
            }
        }
        let m = Arc::new(Mutex::new(Model::load(path)?));
        cache.insert(path.to_path_buf(), (modified, m.clone()));
        Ok(m)
    }

    /// The splits of a data set (its test images), loaded once.
    fn splits(&self, kind: DatasetKind) -> Result<Arc<Splits>, Error> {
        let mut cache = self
            .splits
            .lock()
            .map_err(|_| Error::Internal("data cache".into()))?;
        if let Some(s) = cache.get(&kind) {
            return Ok(s.clone());
        }
        let s = Arc::new(crate::data::dataset::load_splits(
            kind,
            self.data.as_deref(),
            0,
        )?);
        cache.insert(kind, s.clone());
        Ok(s)
    }

    /// Sends an event to every open stream, dropping the closed ones.
    fn broadcast(&self, event: &runs::Event) {
        let text = format!(
            "event: {}\ndata: {}\n\n",
            event.name,
            serde_json::to_string(&event.data).unwrap_or_default()
        );
        if let Ok(mut streams) = self.streams.lock() {
            streams.retain(|s| s.send(text.clone()).is_ok());
        }
    }
}

/// Serves until `stop()` says so (Ctrl-C); prints the address first.
pub fn serve(opts: Options, stop: &(dyn Fn() -> bool + Sync)) -> Result<(), Error> {
    for root in &opts.roots {
        if !root.is_dir() {
            return Err(Error::Config(format!(
                "{} is not a folder: `convnet serve` shows the runs in folders (default runs/)",
                root.display()
            )));
        }
    }
    let cannot = |e: &dyn std::fmt::Display| {
        Error::Config(format!(
            "cannot listen on {}:{}: {e} (--host, --port)",
            opts.host, opts.port
        ))
    };
    let listener =
        std::net::TcpListener::bind((opts.host.as_str(), opts.port)).map_err(|e| cannot(&e))?;
    no_delay(&listener);
    let server = tiny_http::Server::from_listener(listener, None).map_err(|e| cannot(&e))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| Error::Internal("the server has no IP address".into()))?;
    let state = Arc::new(State {
        roots: opts.roots.clone(),
        found: Mutex::new(runs::scan(&opts.roots)),
        summaries: Mutex::new(serde_json::Value::Null),
        streams: Mutex::new(Vec::new()),
        open_streams: AtomicUsize::new(0),
        models: Mutex::new(HashMap::new()),
        evaluations: Mutex::new(HashMap::new()),
        splits: Mutex::new(HashMap::new()),
        data: opts.data.clone(),
        stopping: AtomicBool::new(false),
    });
    // A server outlives its stdout (`convnet serve | head -1`, a script that reads the URL
    // and goes): a closed pipe must not end it, so SIGPIPE is ignored from here on and
    // what it prints is best effort.
    // SAFETY: setting a signal's action is process-wide and safe with threads running.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let shown: Vec<String> = opts.roots.iter().map(|r| r.display().to_string()).collect();
    say(format_args!(
        "convnet serve: http://{addr}/ · {}",
        shown.join(", ")
    ));
    if addr.ip().is_loopback() {
        say(format_args!(
            "  (this machine only; from a laptop: ssh -L {0}:localhost:{0} THIS_HOST, then open http://localhost:{0}/)",
            addr.port()
        ));
    }
    let watcher = {
        let state = state.clone();
        std::thread::spawn(move || watch(&state))
    };
    let busy = Arc::new(AtomicUsize::new(0));
    while !stop() {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => continue,
        };
        // An event stream holds its thread for as long as the page is open, so streams
        // are capped on their own (MAX_STREAMS) and do not take a handler's place.
        let streaming = request.url().starts_with("/api/events");
        while !streaming && busy.load(Ordering::SeqCst) >= MAX_HANDLERS {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !streaming {
            busy.fetch_add(1, Ordering::SeqCst);
        }
        let (state, busy) = (state.clone(), busy.clone());
        std::thread::spawn(move || {
            http::handle(&state, request);
            if !streaming {
                busy.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }
    state.stopping.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    say(format_args!("convnet serve: stopped"));
    Ok(())
}

/// One line to stdout, if it is still there.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Sets TCP_NODELAY on the listening socket, which the accepted connections inherit.
/// Without it a reply written in two pieces (head, then a body that does not end on a
/// full segment) waits for the browser's delayed acknowledgement: 40 ms a request.
fn no_delay(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int of the size passed.
    unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The watcher: scans the roots, reads what the logs gained, tells the pages.
fn watch(state: &State) {
    let mut watch = Watch::default();
    let mut last_scan = Instant::now();
    while !state.stopping.load(Ordering::SeqCst) {
        if last_scan.elapsed() > Duration::from_secs(2) {
            let found = runs::scan(&state.roots);
            if let Ok(mut f) = state.found.lock() {
                *f = found;
            }
            last_scan = Instant::now();
        }
        let runs = state.found.lock().map(|f| f.0.clone()).unwrap_or_default();
        let events = watch.poll(&runs);
        if let Ok(mut s) = state.summaries.lock() {
            *s = serde_json::Value::Array(watch.summaries.values().cloned().collect());
        }
        for e in &events {
            state.broadcast(e);
        }
        std::thread::sleep(WATCH_EVERY);
    }
}
