//! How long `convnet serve` takes to answer a drawing: preparation (rasterise, ink box,
//! 20 px box, centre of mass), the forward pass and every conv, ReLU and pool feature map,
//! for seed-cnn and cnn-plus. Starts the real server on 127.0.0.1 in this process and posts
//! the same kind of stroke the page sends; reports the server's own time (`server_ms`, the
//! issue's limit is 50 ms) and the whole HTTP round trip, median and 95th percentile.
//! Run: `cargo bench --bench draw`.

use convnet::bench::{serve, ServeOptions};
use convnet::{Model, ModelSpec, Network};
use rand::SeedableRng;
use std::io::Read;
use std::time::{Duration, Instant};

const REQUESTS: usize = 200;

fn main() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for preset in ["seed-cnn", "cnn-plus"] {
        // A run folder the server finds: a model with initial weights (the time does not
        // depend on their values) and a log.
        let run = dir.path().join(preset);
        std::fs::create_dir_all(&run).unwrap();
        let mut net = Network::build(&ModelSpec::preset(preset).unwrap()).unwrap();
        net.initialize(&mut rand_pcg::Pcg64::seed_from_u64(1), None);
        Model::from_network(net, None)
            .save(run.join("model.safetensors"))
            .unwrap();
        std::fs::write(run.join("metrics.csv"), "epoch\n").unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let root = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let opts = ServeOptions {
            roots: vec![root],
            host: "127.0.0.1".into(),
            port,
            data: None,
        };
        serve(opts, &|| false).unwrap();
    });
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while agent.get(&format!("{base}/api/runs")).call().is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{REQUESTS} drawings each, one client, {} threads",
        rayon::current_num_threads()
    );
    println!(
        "{:<10} {:>16} {:>16} {:>16} {:>16}",
        "model", "server ms p50", "server ms p95", "round trip p50", "round trip p95"
    );
    for preset in ["seed-cnn", "cnn-plus"] {
        let (mut server, mut round) = (Vec::new(), Vec::new());
        for i in 0..REQUESTS + 5 {
            // A "7" drawn a little differently each time, as a hand would.
            let d = (i % 7) as f32 * 3.0;
            let body = format!(
                r#"{{"width":280,"height":280,"line":18,"strokes":[[[{},{}],[{},{}],[{},{}]]]}}"#,
                60.0 + d,
                50.0,
                220.0 - d,
                55.0 + d,
                120.0 + d,
                240.0
            );
            let t = Instant::now();
            let resp = agent
                .post(&format!("{base}/api/draw?run=0/{preset}"))
                .set("Content-Type", "application/json")
                .send_bytes(body.as_bytes())
                .expect("the server answers the drawing");
            let mut text = String::new();
            resp.into_reader().read_to_string(&mut text).unwrap();
            let took = t.elapsed().as_secs_f64() * 1e3;
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            // The first few load the model and warm the caches.
            if i >= 5 {
                server.push(v["server_ms"].as_f64().unwrap());
                round.push(took);
            }
        }
        let pct = |v: &mut Vec<f64>, p: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * p).round() as usize]
        };
        println!(
            "{preset:<10} {:>16.2} {:>16.2} {:>16.2} {:>16.2}",
            pct(&mut server, 0.5),
            pct(&mut server, 0.95),
            pct(&mut round, 0.5),
            pct(&mut round, 0.95)
        );
    }
}
