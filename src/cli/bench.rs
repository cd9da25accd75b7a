//! `convnet bench`: training and evaluation speed on synthetic batches, per-layer times,
//! and the GEMM crate's own peak for comparison.

use super::common::SpecChoice;
use crate::engine::{Engine, Network};
use crate::kernels::gemm::{sgemm_with, Backend};
use crate::kernels::simd;
use crate::nn::optim::Optimizer;
use crate::nn::Mode;
use crate::report::table::group_digits;
use crate::run::config::TrainConfig;
use crate::run::trainer::build_network;
use crate::Error;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: SpecChoice,
    /// Training batch sizes to measure, comma-separated.
    #[arg(long, default_value = "100", value_delimiter = ',')]
    batch_size: Vec<usize>,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 1000)]
    eval_batch_size: usize,
    /// Worker threads; 0 = one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seconds to spend on each measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Images in the epoch the per-epoch time is quoted for.
    #[arg(long, default_value_t = 50_000)]
    epoch_images: usize,
}

fn random_batch(net: &mut Network, n: usize, rng: &mut impl Rng) -> Vec<u8> {
    let classes = net.classes();
    for v in net.input_mut(n) {
        *v = rng.gen_range(-0.5..0.5);
    }
    (0..n).map(|_| rng.gen_range(0..classes) as u8).collect()
}

/// Runs `step` repeatedly for about `seconds` (after one warm-up call), in five equal
/// windows, and returns the best window's calls/s (the machine may be shared: the best
/// window is the least disturbed one) and the number of calls made in all.
fn rate(seconds: f64, mut step: impl FnMut()) -> (f64, usize) {
    step();
    let mut best = 0.0f64;
    let mut total = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let mut calls = 0;
        while calls < 2 || start.elapsed().as_secs_f64() < seconds / 5.0 {
            step();
            calls += 1;
        }
        best = best.max(calls as f64 / start.elapsed().as_secs_f64());
        total += calls;
    }
    (best, total)
}

/// Like `rate`, with the network's per-layer timing on: the best window's calls/s, that
/// window's per-layer times and its number of calls.
fn timed_rate(
    seconds: f64,
    net: &mut Network,
    step: &mut dyn FnMut(&mut Network),
) -> (f64, Vec<(Duration, Duration)>, usize) {
    step(net);
    let (mut best, mut best_times, mut best_calls) = (0.0f64, Vec::new(), 1);
    for _ in 0..5 {
        net.start_timing();
        let start = Instant::now();
        let mut calls = 0;
        while calls < 2 || start.elapsed().as_secs_f64() < seconds / 5.0 {
            step(net);
            calls += 1;
        }
        let per_sec = calls as f64 / start.elapsed().as_secs_f64();
        let times = net.take_timing().unwrap_or_default();
        if per_sec > best {
            (best, best_times, best_calls) = (per_sec, times, calls);
        }
    }
    (best, best_times, best_calls)
}

/// GFLOP/s of a large square SGEMM split into row blocks over the thread pool.
fn gemm_peak(backend: Backend, seconds: f64) -> f64 {
    let n = 1024;
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
    let a: Vec<f32> = (0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut c = vec![0.0f32; n * n];
    let block = n / (rayon::current_num_threads() * 4).max(1);
    let (per_sec, _) = rate(seconds, || {
        c.par_chunks_mut(block * n)
            .zip(a.par_chunks(block * n))
            .for_each(|(c, a)| {
                sgemm_with(backend, a.len() / n, n, n, 1.0, a, false, &b, false, 0.0, c);
            });
    });
    per_sec * 2.0 * (n * n * n) as f64 / 1e9
}

pub fn run(args: Args) -> Result<(), Error> {
    let threads = crate::threads::init_threads(args.threads);
    // As training runs: its loops start on a worker of the pool (`on_pool`).
    crate::threads::on_pool(|| measure(args, threads))
}

fn measure(args: Args, threads: usize) -> Result<(), Error> {
    let (spec, _) = args.model.resolve()?;
    let cfg = TrainConfig::default_for(spec);
    let engine = Engine::from_env();
    let mut net = build_network(&cfg, engine)?;
    let macs = net.macs() as f64;
    // Forward = 2*MACs flops; backward ~ twice that (input and weight gradients).
    let train_flops = 6.0 * macs;
    let mut convs = match (engine, simd::detect()) {
        (Engine::Reference, _) => "the readable layers of nn/ (reference engine)".to_string(),
        (_, Some(isa)) => format!("direct {isa} kernels"),
        (_, None) => "im2col + GEMM".to_string(),
    };
    let mut winograd = false;
    for (layer, path) in net.kernel_paths() {
        winograd |= path.contains("Winograd");
        convs += &format!(" · {layer} {path}");
    }
    println!(
        "convnet bench: model {} · {} mult-adds/image · {:.2} MFLOP per training image · {threads} threads · GEMM crate {} · stride-1 convs: {convs}",
        cfg.model.name,
        group_digits(net.macs()),
        train_flops / 1e6,
        Backend::DEFAULT.crate_name()
    );
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(7);
    let mut sgd = Optimizer::sgd(0.9, 5e-4);
    let mut best_train = 0.0f64;
    for &bs in &args.batch_size {
        if bs == 0 {
            return Err(Error::Config("--batch-size must be at least 1".into()));
        }
        let labels = random_batch(&mut net, bs, &mut rng);
        // Per-layer times of the best window only, so they add up to that window's step
        // time (averaged over every window, a noisy host makes them sum to more).
        let (steps_per_sec, timing, steps) = timed_rate(args.seconds, &mut net, &mut |net| {
            net.train_step(&labels);
            sgd.step(net.params_mut(), 1e-6, 1);
        });
        let ips = steps_per_sec * bs as f64;
        best_train = best_train.max(ips * train_flops / 1e9);
        println!(
            "\ntrain batch {bs:>4}: {ips:>9.0} images/s · {:>6.1} GFLOP/s · {:.2} s per {}-image epoch",
            ips * train_flops / 1e9,
            args.epoch_images as f64 / ips,
            args.epoch_images
        );
        // Layers run chunk by chunk on every thread at once, so a layer's share is its
        // summed thread time divided by the threads in use.
        println!(
            "  {:<10} {:>12} {:>12}   (ms per batch: thread time / threads)",
            "layer", "forward ms", "backward ms"
        );
        let runs = steps as f64;
        for (i, (l, (f, b))) in net.layers().zip(&timing).enumerate() {
            if let Some(host) = net.applied_by(i) {
                let host = net.layer(host).name();
                println!("  {:<10} {:>25}", l.name(), format!("(done by {host})"));
                continue;
            }
            println!(
                "  {:<10} {:>12.3} {:>12.3}",
                l.name(),
                f.as_secs_f64() * 1e3 / runs,
                b.as_secs_f64() * 1e3 / runs
            );
        }
    }
    // Scaling: the same training step on a one-thread pool.
    if threads > 1 {
        let bs = if args.batch_size.contains(&100) {
            100
        } else {
            args.batch_size.first().copied().unwrap_or(100).max(1)
        };
        let labels = random_batch(&mut net, bs, &mut rng);
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .start_handler(|_| crate::threads::flush_denormals())
            .build()
            .map_err(|e| Error::Config(format!("cannot start a thread: {e}")))?;
        let (one, _) = single.install(|| {
            rate(args.seconds, || {
                net.train_step(&labels);
            })
        });
        let (many, _) = rate(args.seconds, || {
            net.train_step(&labels);
        });
        println!(
            "\nscaling, batch {bs} (forward + backward): 1 thread {:.0} images/s, {threads} threads {:.0} images/s: {:.2}x",
            one * bs as f64,
            many * bs as f64,
            many / one
        );
    }
    let eb = args.eval_batch_size.max(1);
    random_batch(&mut net, eb, &mut rng);
    let (per_sec, _) = rate(args.seconds, || {
        net.forward(Mode::Eval);
    });
    let eval_ips = per_sec * eb as f64;
    println!(
        "\neval batch {eb}: {eval_ips:.0} images/s · {:.1} GFLOP/s",
        eval_ips * 2.0 * macs / 1e9
    );
    let peak = gemm_peak(Backend::DEFAULT, args.seconds.min(2.0));
    println!(
        "\n{} SGEMM 1024x1024x1024 on {threads} threads: {peak:.1} GFLOP/s; training reaches {:.1}% of it",
        Backend::DEFAULT.crate_name(),
        100.0 * best_train / peak
    );
    // The hardware's own ceiling: every thread running independent FMAs at once.
    let fma: Option<f64> = rayon::broadcast(|_| simd::fma_flops_per_second(200_000_000))
        .into_iter()
        .sum();
    if let (Some(fma), Some(isa)) = (fma, simd::detect()) {
        let fma = fma / 1e9;
        println!(
            "FMA peak ({isa}) on {threads} threads: {fma:.1} GFLOP/s; the SGEMM reaches {:.1}% of it, training {:.1}%, evaluation {:.1}%",
            100.0 * peak / fma,
            100.0 * best_train / fma,
            100.0 * eval_ips * 2.0 * macs / 1e9 / fma
        );
        if winograd {
            // GFLOP/s above count the direct convolution's multiply-adds, so that presets
            // and paths compare on one scale; Winograd layers do fewer.
            println!(
                "(GFLOP/s and shares count each conv's direct multiply-adds; the Winograd layers multiply 2.25-4x less, so a share can pass 100%)"
            );
        }
    }
    Ok(())
}
