//! `convnet serve` in a real browser: headless Chromium driven through ChromeDriver against
//! the real server on 127.0.0.1, with a seed-cnn trained here for one epoch on MNIST and a
//! small sweep. It draws digits with pointer events (mouse, touch and pen) and reads the
//! class the page shows, appends an epoch to a run's `metrics.csv` and watches the curve
//! gain a point, opens the model tab and checks the kernels are drawn and the confusion
//! matrix opens its images, and opens a sweep trial from the heat map.
//!
//! Needs `chromium` and `chromedriver` on the PATH (Debian: `apt-get install chromium
//! chromium-driver`; `.ci/run` installs them) and the data sets. Screenshots go to
//! `target/tmp/screenshots/`, or to `docs/` with `CONVNET_SCREENSHOTS=docs`.

mod common;
use common::{text, BIN};
use fantoccini::actions::{
    InputSource, MouseActions, PenActions, PointerAction, TouchActions, MOUSE_BUTTON_LEFT,
};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `convnet ARGS` on the real data, which must succeed.
fn convnet_ok(args: &[&str]) {
    let o = Command::new(BIN)
        .args(args)
        .env("CONVNET_DATA", common::data())
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}: {}", text(&o).1);
}

/// Where screenshots go.
fn shots() -> PathBuf {
    let dir = if std::env::var("CONVNET_SCREENSHOTS").as_deref() == Ok("docs") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let path = shots().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot {}", path.display());
}

/// Runs `script` (a function body returning a value) until it returns something other than
/// null or false, at most `limit`; returns the value and how long it took.
async fn wait_js(c: &Client, what: &str, script: &str, limit: Duration) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let v = c.execute(script, vec![]).await.unwrap();
        if !(v.is_null() || v == json!(false)) {
            return (v, start.elapsed());
        }
        if start.elapsed() >= limit {
            let page = c
                .execute(
                    "return {tab: location.hash, legend: [...document.querySelectorAll('#legend > span')].map(s => s.textContent),
                             points: [...document.querySelectorAll('svg[data-points]')].map(s => s.getAttribute('data-points')),
                             prediction: document.getElementById('prediction').textContent,
                             selected: [...document.querySelectorAll('#runs tbody tr')].filter(tr => tr.querySelector('input').checked).map(tr => tr.dataset.id)};",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!("{what}: not within {limit:?}; the page: {page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stroke through `points` (offsets from the pad's centre, in CSS pixels), with a pointer
/// of the given kind, as a person draws: down, small moves, up.
async fn stroke(c: &Client, kind: &str, points: &[(i64, i64)]) {
    let pad = c.find(Locator::Id("pad")).await.unwrap();
    let mut moves = vec![
        PointerAction::MoveToElement {
            element: pad,
            duration: None,
            x: points[0].0,
            y: points[0].1,
        },
        PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        },
    ];
    for w in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        let n = ((x1 - x0).abs().max((y1 - y0).abs()) / 8).max(1);
        for k in 1..=n {
            moves.push(PointerAction::MoveBy {
                duration: Some(Duration::from_millis(5)),
                x: (x0 + (x1 - x0) * k / n) - (x0 + (x1 - x0) * (k - 1) / n),
                y: (y0 + (y1 - y0) * k / n) - (y0 + (y1 - y0) * (k - 1) / n),
            });
        }
    }
    moves.push(PointerAction::Up {
        button: MOUSE_BUTTON_LEFT,
    });
    match kind {
        "mouse" => {
            let a = moves
                .into_iter()
                .fold(MouseActions::new("mouse".into()), |a, m| a.then(m));
            c.perform_actions(a).await.unwrap()
        }
        "touch" => {
            let a = moves
                .into_iter()
                .fold(TouchActions::new("finger".into()), |a, m| a.then(m));
            c.perform_actions(a).await.unwrap()
        }
        _ => {
            let a = moves
                .into_iter()
                .fold(PenActions::new("pen".into()), |a, m| a.then(m));
            c.perform_actions(a).await.unwrap()
        }
    }
    c.release_actions().await.unwrap();
}

/// Clears the pad, draws the strokes and returns the class index the page shows.
async fn draw_digit(c: &Client, kind: &str, strokes: &[&[(i64, i64)]]) -> (String, String) {
    c.find(Locator::Id("clear"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    for s in strokes {
        stroke(c, kind, s).await;
    }
    // The page asks after each stroke and shows only the answer to the last one.
    wait_js(
        c,
        "a prediction",
        "const p = document.getElementById('prediction');
         return p.hasAttribute('data-label') && document.querySelectorAll('#maps canvas').length > 0;",
        Duration::from_secs(10),
    )
    .await;
    let p = c.find(Locator::Id("prediction")).await.unwrap();
    let label = p.attr("data-label").await.unwrap().unwrap_or_default();
    (label, p.text().await.unwrap())
}

#[test]
#[cfg_attr(
    not(all(convnet_browser, convnet_data)),
    ignore = "needs Chromium, ChromeDriver and the data sets: apt-get install chromium chromium-driver; CONVNET_DATA=DIR"
)]
fn the_page_draws_predicts_follows_a_live_run_and_shows_the_model_in_chromium() {
    let chromium = on_path("chromium")
        .or_else(|| on_path("chromium-browser"))
        .expect("chromium on the PATH (apt-get install chromium)");
    let driver = on_path("chromedriver")
        .expect("chromedriver on the PATH (apt-get install chromium-driver)");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("runs");
    let run = root.join("seed-cnn");
    convnet_ok(&[
        "train",
        "--epochs",
        "1",
        "--seed",
        "1",
        "--no-plot",
        "--out",
        run.to_str().unwrap(),
    ]);
    convnet_ok(&[
        "sweep",
        "--epochs",
        "1",
        "--limit",
        "3000",
        "--val-size",
        "1000",
        "--grid",
        "lr=0.02,0.1",
        "--grid",
        "weight_decay=0,0.001",
        "--out",
        root.join("lr-wd").to_str().unwrap(),
    ]);

    let mut server = Killed(
        Command::new(BIN)
            .args([
                "serve",
                root.to_str().unwrap(),
                "--port",
                "0",
                "--data",
                &common::data(),
            ])
            .stdout(Stdio::piped())
            // Whatever the server says on failure shows in the test's log.
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut first = String::new();
    let mut out = BufReader::new(server.0.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    // Keep reading: the rest of the banner goes to an open pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no URL in `{first}`"))
        .to_string();
    let port = free_port();
    let _driver = Killed(
        Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while ureq::get(&format!("http://127.0.0.1:{port}/status"))
        .call()
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let profile = dir.path().join("profile");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1100", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.display())],
            }),
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");

        // Draw: a "1" with the mouse, a "7" with a finger, a "0" with a pen.
        c.goto(&format!("{url}#draw")).await.unwrap();
        wait_js(
            &c,
            "the model list",
            "const s = document.getElementById('draw-model'); return s.options.length > 0 && s.value.includes('|') ? s.value : null;",
            Duration::from_secs(10),
        )
        .await;
        // The seed-cnn run's final model (the page starts on the newest run, a trial).
        c.execute(
            "const s = document.getElementById('draw-model'); s.value = '0/seed-cnn|model'; s.dispatchEvent(new Event('change'));
             return s.value;",
            vec![],
        )
        .await
        .unwrap();
        let (one, shown) = draw_digit(&c, "mouse", &[&[(4, -95), (0, 0), (-4, 95)]]).await;
        assert_eq!(one, "1", "a drawn 1 read as {shown}");
        let seven: &[(i64, i64)] = &[(-75, -85), (75, -85), (10, 0), (-25, 100)];
        let (seven_label, shown) = draw_digit(&c, "touch", &[seven]).await;
        assert_eq!(seven_label, "7", "a 7 drawn by touch read as {shown}");
        let zero: Vec<(i64, i64)> = (0..=36)
            .map(|i| {
                let a = i as f64 * std::f64::consts::TAU / 36.0;
                ((60.0 * a.sin()) as i64, (-90.0 * a.cos()) as i64)
            })
            .collect();
        let (zero_label, shown) = draw_digit(&c, "pen", &[&zero]).await;
        assert_eq!(zero_label, "0", "a 0 drawn with a pen read as {shown}");
        // Another model answers the same drawing.
        let bars = "return [...document.querySelectorAll('#probs .pct')].map(e => e.textContent).join(' ');";
        let before = c.execute(bars, vec![]).await.unwrap();
        c.execute(
            "const s = document.getElementById('draw-model'); s.value = '0/lr-wd/lr=0.02_weight_decay=0|model'; s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await
        .unwrap();
        wait_js(
            &c,
            "the other model's answer",
            &format!("const now = [...document.querySelectorAll('#probs .pct')].map(e => e.textContent).join(' '); return now !== {before} && now.length > 0;"),
            Duration::from_secs(10),
        )
        .await;
        c.execute(
            "const s = document.getElementById('draw-model'); s.value = '0/seed-cnn|model'; s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await
        .unwrap();
        wait_js(
            &c,
            "seed-cnn's answer again",
            &format!("return [...document.querySelectorAll('#probs .pct')].map(e => e.textContent).join(' ') === {before};"),
            Duration::from_secs(10),
        )
        .await;
        // An uploaded photo-like image (dark ink on light paper, 4x the size) of test
        // image 0, a 7.
        let test = convnet::Splits::load_from(
            convnet::DatasetKind::Mnist,
            Some(Path::new(&common::data())),
            5000,
        )
        .unwrap()
        .test;
        assert_eq!(test.labels[0], 7);
        let px = test.image(0).to_vec();
        let photo = image::GrayImage::from_fn(112, 112, |x, y| {
            image::Luma([230 - (px[(y / 4 * 28 + x / 4) as usize] as u32 * 200 / 255) as u8])
        });
        let file = dir.path().join("test-0.png");
        photo.save(&file).unwrap();
        c.find(Locator::Id("clear")).await.unwrap().click().await.unwrap();
        c.find(Locator::Id("upload"))
            .await
            .unwrap()
            .send_keys(file.to_str().unwrap())
            .await
            .unwrap();
        let (label, _) = wait_js(
            &c,
            "the uploaded image's class",
            "const p = document.getElementById('prediction'); return p.getAttribute('data-label');",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(label, "7");
        let caption = c
            .execute("return document.querySelector('#steps figcaption').textContent;", vec![])
            .await
            .unwrap();
        assert!(caption.as_str().unwrap().contains("inverted"), "{caption}");
        // The drawn 0 again, for the pictures below.
        draw_digit(&c, "pen", &[&zero]).await;
        // The page shows the four preparation steps, ten bars, and every channel of the
        // conv, ReLU and pool layers: 8, 8, 8, 16, 16, 16.
        let counts = c
            .execute(
                "return [document.querySelectorAll('#steps figure').length,
                         document.querySelectorAll('#probs .bar').length,
                         [...document.querySelectorAll('#maps .maps')].map(g => g.children.length)];",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(counts, json!([4, 10, [8, 8, 8, 16, 16, 16]]));
        // Enlarging a map shows the kernel that made it, with its values.
        c.execute("document.querySelectorAll('#maps canvas.map')[3].click();", vec![])
            .await
            .unwrap();
        let (cells, _) = wait_js(
            &c,
            "the enlarged map and its kernel",
            "const z = document.getElementById('zoom'); return !z.hidden && z.querySelectorAll('table.kernel-values td').length;",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(cells, json!(9), "conv1's 3x3 kernel of one input channel");
        screenshot(&c, "serve-zoom.png").await;
        c.execute("document.getElementById('zoom-close').click(); window.scrollTo(0, 0);", vec![]).await.unwrap();
        screenshot(&c, "serve-draw.png").await;
        c.execute("document.getElementById('maps').scrollIntoView();", vec![]).await.unwrap();
        screenshot(&c, "serve-maps.png").await;

        // Curves: a line appended to metrics.csv reaches the open page's chart.
        c.goto(&format!("{url}#curves")).await.unwrap();
        // The seed-cnn run's curves alone (the page starts with the newest run, a trial).
        // One tick a look: a tick redraws the table.
        wait_js(
            &c,
            "the seed-cnn curves alone",
            "const wrong = [...document.querySelectorAll('#runs tbody tr')]
               .find(tr => tr.querySelector('input').checked !== (tr.dataset.id === '0/seed-cnn'));
             if (wrong) { wrong.querySelector('input').click(); return false; }
             const l = document.querySelectorAll('#legend > span:has(.swatch)');
             const s = document.querySelector('#chart-loss svg');
             return l.length === 1 && l[0].textContent.startsWith('seed-cnn') && s && s.getAttribute('data-points') === '2';",
            Duration::from_secs(10),
        )
        .await;
        let points = "const s = document.querySelector('#chart-loss svg'); return s && Number(s.getAttribute('data-points')) > 0 ? Number(s.getAttribute('data-points')) : null;";
        let (before, _) = wait_js(&c, "the loss chart", points, Duration::from_secs(10)).await;
        wait_js(&c, "the live stream", "return document.getElementById('live').classList.contains('on');", Duration::from_secs(10)).await;
        let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        let mut row: Vec<String> = metrics.lines().last().unwrap().split(',').map(String::from).collect();
        row[0] = "2".into();
        row[3] = format!("{}", row[3].parse::<f64>().unwrap() * 0.6);
        row[7] = format!("{}", row[7].parse::<f64>().unwrap() * 0.8);
        let mut f = std::fs::File::options().append(true).open(run.join("metrics.csv")).unwrap();
        writeln!(f, "{}", row.join(",")).unwrap();
        drop(f);
        let grown = format!(
            "const s = document.querySelector('#chart-loss svg'); return s && Number(s.getAttribute('data-points')) > {before} ? Number(s.getAttribute('data-points')) : null;"
        );
        let (after, took) = wait_js(&c, "the appended epoch on the chart", &grown, Duration::from_secs(2)).await;
        eprintln!("chart points {before} -> {after} {took:?} after the line was appended");
        assert_eq!(after.as_u64(), Some(before.as_u64().unwrap() + 2), "a train and a validation point");
        screenshot(&c, "serve-curves.png").await;

        // The model: the layer table, 8x1 + 16x8 kernels drawn (not blank), the evaluation,
        // a confusion cell's images.
        c.execute(
            "[...document.querySelectorAll('#runs td.name')].find(td => td.title === '0/seed-cnn').click();",
            vec![],
        )
        .await
        .unwrap();
        let (kernels, _) = wait_js(
            &c,
            "the kernels",
            "const k = document.querySelectorAll('#kernels canvas.kernel'); return k.length > 0 ? k.length : null;",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(kernels, json!(8 + 16 * 8));
        c.execute("window.scrollTo(0, 0);", vec![]).await.unwrap();
        screenshot(&c, "serve-model.png").await;
        let distinct = c
            .execute(
                "const cv = document.querySelector('#kernels canvas.kernel');
                 const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
                 const set = new Set(); for (let i = 0; i < d.length; i += 4) set.add(d[i] + ',' + d[i+1] + ',' + d[i+2]);
                 return set.size;",
                vec![],
            )
            .await
            .unwrap();
        assert!(distinct.as_u64().unwrap() >= 3, "a 3x3 kernel drawn in {distinct} colours");
        let rows = c
            .execute("return document.querySelectorAll('#layer-table tr').length;", vec![])
            .await
            .unwrap();
        assert!(rows.as_u64().unwrap() >= 10, "{rows} rows in the layer table");
        c.find(Locator::Id("evaluate")).await.unwrap().click().await.unwrap();
        let (summary, _) = wait_js(
            &c,
            "the evaluation",
            "const t = document.getElementById('eval-summary').textContent; return t.includes('/10000') ? t : null;",
            Duration::from_secs(60),
        )
        .await;
        let correct: u64 = summary.as_str().unwrap().split("accuracy ").nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
        assert!(correct >= 9700, "{summary}");
        let (n, _) = wait_js(
            &c,
            "a confusion cell's images",
            "const cells = [...document.querySelectorAll('#confusion td')].filter(td => { const [i, j] = td.dataset.cell.split(','); return i !== j && Number(td.textContent) > 0; });
             if (!window.clicked) { cells[0].click(); window.clicked = Number(cells[0].textContent); }
             const n = document.querySelectorAll('#cell-images canvas').length;
             return n > 0 ? [n, window.clicked] : null;",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(n[0].as_u64(), n[1].as_u64().map(|k| k.min(48)), "one image per count");
        c.execute("document.getElementById('eval-summary').scrollIntoView();", vec![]).await.unwrap();
        screenshot(&c, "serve-confusion.png").await;

        // The sweep: its heat map, and a click on a cell opens that trial's curves.
        c.execute("[...document.querySelectorAll('#sweeps li')].find(li => li.textContent === 'lr-wd').click();", vec![])
            .await
            .unwrap();
        let (cells, _) = wait_js(
            &c,
            "the heat map",
            "const r = document.querySelectorAll('#sweep-heatmap rect[data-trial]'); return r.length > 0 ? r.length : null;",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(cells, json!(4));
        screenshot(&c, "serve-sweep.png").await;
        c.execute("document.querySelector('#sweep-heatmap rect[data-trial]').dispatchEvent(new MouseEvent('click'));", vec![])
            .await
            .unwrap();
        let (opened, _) = wait_js(
            &c,
            "the trial's curves",
            "const tr = document.querySelector('#runs tr.focus'); return !document.getElementById('tab-curves').hidden && tr ? tr.dataset.id : null;",
            Duration::from_secs(10),
        )
        .await;
        assert!(opened.as_str().unwrap().starts_with("0/lr-wd/lr="), "{opened}");
        let errors = c
            .execute("return document.getElementById('model-error').hidden;", vec![])
            .await
            .unwrap();
        assert_eq!(errors, json!(true));
        c.close().await.unwrap();
    });
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server is still up"
    );
}
