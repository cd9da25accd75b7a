//! The fast convolution alone, one chunk of 8 images at a time on one thread, for the conv
//! layers of seed-cnn and cnn-plus: forward (training mode, keeping what the backward pass
//! needs), backward with the input gradient (weight gradient + input gradient), and the
//! weight gradient alone; each on the direct shifted sums and as Winograd F(2x2, 3x3)
//! (forward and input gradient), with the weight gradient as shifted dots or, where the
//! output channels fill whole vectors, with them in the lanes, as dots ("lane-dW") or as
//! Winograd ("wino-dW").
//! GFLOP/s count 2 x multiply-adds of the layer's own arithmetic (no padding or wide-layout
//! columns). Run: `cargo bench --bench conv` (CONVNET_SIMD=avx2|off for the other paths).

use convnet::bench::{FastConv, Scratch, WeightGrad};
use convnet::nn::ConvShape;
use convnet::Mode;
use std::time::Instant;

fn main() {
    let shapes = [
        ("seed conv1 1->8 @28", [1, 28, 28], 8, false),
        ("seed conv2 8->16 @14", [8, 14, 14], 16, false),
        ("plus conv1 1->16 @28", [1, 28, 28], 16, false),
        ("plus conv2 16->32 @28", [16, 28, 28], 32, false),
        ("plus conv3 32->64 @14", [32, 14, 14], 64, false),
    ];
    println!(
        "{:<38} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "layer", "fwd us", "fwd GFLOP/s", "bwd us", "bwd GFLOP/s", "dW us", "dW GFLOP/s"
    );
    let modes = [
        (false, WeightGrad::ShiftedDots),
        (true, WeightGrad::ShiftedDots),
        (false, WeightGrad::LaneDots),
        (true, WeightGrad::LaneDots),
        (true, WeightGrad::Winograd),
    ];
    for ((name, input, out_c, _), (winograd, dw)) in shapes
        .into_iter()
        .flat_map(|s| modes.into_iter().map(move |m| (s, m)))
    {
        let g = ConvShape::new(input, out_c, 3, 1, 1).unwrap();
        let nb = 8;
        let mut conv = FastConv::new(g);
        if conv.set_winograd(winograd).is_err() || conv.set_weight_grad(dw).is_err() {
            continue;
        }
        let name = format!(
            "{name} {}{}",
            if winograd { "wino" } else { "direct" },
            match dw {
                WeightGrad::ShiftedDots => "",
                WeightGrad::LaneDots => " lane-dW",
                WeightGrad::Winograd => " wino-dW",
            }
        );
        // CONVNET_BENCH_ONLY=<part of a row's name>: only those rows (for a profiler).
        if let Ok(only) = std::env::var("CONVNET_BENCH_ONLY") {
            if !name.contains(&only) {
                continue;
            }
        }
        let w: Vec<f32> = (0..out_c * input[0] * 9)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let b: Vec<f32> = (0..out_c).map(|i| i as f32 * 0.01).collect();
        let x: Vec<f32> = (0..nb * input.iter().product::<usize>())
            .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.05)
            .collect();
        let mut y = vec![0.0f32; nb * out_c * g.out_h * g.out_w];
        let dy: Vec<f32> = (0..y.len())
            .map(|i| ((i * 7 % 17) as f32 - 8.0) * 0.01)
            .collect();
        let mut dx = vec![0.0f32; x.len()];
        let mut s = Scratch::default();
        conv.prepare(&w);
        let macs = (nb * out_c * input[0] * 9 * g.out_h * g.out_w) as f64;
        let time = |f: &mut dyn FnMut()| {
            let mut best = f64::INFINITY;
            for _ in 0..7 {
                let reps = 200;
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            best
        };
        let fwd = time(&mut || conv.forward_chunk((&w, &b), &x, &mut y, &mut s, Mode::Train));

        let bwd = time(&mut || {
            conv.forward_chunk((&w, &b), &x, &mut y, &mut s, Mode::Train);
            conv.backward_chunk((&w, &b), &x, &y, &dy, Some(&mut dx), &mut s);
        }) - fwd;
        let dw_only = time(&mut || {
            conv.forward_chunk((&w, &b), &x, &mut y, &mut s, Mode::Train);
            conv.backward_chunk((&w, &b), &x, &y, &dy, None, &mut s);
        }) - fwd;
        println!(
            "{name:<38} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>12.1}",
            fwd * 1e6,
            2.0 * macs / fwd / 1e9,
            bwd * 1e6,
            4.0 * macs / bwd / 1e9,
            dw_only * 1e6,
            2.0 * macs / dw_only / 1e9
        );
    }
}
