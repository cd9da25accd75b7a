//! The readable layers' own behaviour beyond their gradients: batch-norm statistics by
//! hand, dropout's rate, the optimisers against PyTorch.

use crate::nn::optim::{Optimizer, OptimizerKind};
use crate::nn::{BatchNorm, Dropout, Layer, Mode, Param, ParamRole};
use crate::tensor::Tensor;

/// Running statistics by hand: channel values 1, 2, 3, 4 (N = 2, H = 1, W = 2).
/// mean 2.5, biased variance 1.25, unbiased 5/3; PyTorch's momentum 0.1:
/// running_mean = 0.9 * 0 + 0.1 * 2.5 = 0.25, running_var = 0.9 * 1 + 0.1 * 5/3 = 1.0666667.
#[test]
fn batch_norm_running_statistics_by_hand() {
    let mut bn = BatchNorm::new("bn", &[1, 1, 2], 1e-5, 0.1);
    let x = Tensor::from_vec(&[2, 1, 1, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let y = bn.forward(&x, Mode::Train);
    assert!((bn.running_mean[0] - 0.25).abs() < 1e-7);
    assert!((bn.running_var[0] - 1.066_666_7).abs() < 1e-6);
    assert_eq!(bn.num_batches_tracked, 1);
    let s = (1.25f32 + 1e-5).sqrt();
    for (got, want) in y.data.iter().zip([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    // Evaluation uses the running statistics.
    let y = bn.forward(&x, Mode::Eval);
    let s = (1.066_666_7f32 + 1e-5).sqrt();
    assert!((y.data[0] - (1.0 - 0.25) / s).abs() < 1e-5);
    bn.forward(&x, Mode::Train);
    assert_eq!(bn.num_batches_tracked, 2);
}

#[test]
fn dropout_scales_kept_values_and_is_off_in_evaluation() {
    let mut d = Dropout::new("drop", 0.3, &[1000]);
    let x = Tensor::from_vec(&[10, 1000], vec![1.0; 10_000]);
    d.reseed(42);
    let y = d.forward(&x, Mode::Train);
    let zeros = y.data.iter().filter(|&&v| v == 0.0).count();
    assert!(
        (2700..3300).contains(&zeros),
        "{zeros} of 10000 dropped, expected about 3000"
    );
    assert!(y
        .data
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
    let mean = y.data.iter().sum::<f32>() / 10_000.0;
    assert!(
        (mean - 1.0).abs() < 0.05,
        "inverted dropout keeps the mean: {mean}"
    );
    // Neighbours share one 64-bit draw (two 24-bit fractions from it): each half drops
    // at the rate on its own, and independently of the other (both: 0.3^2 = 9%).
    let pairs = y.data.chunks(2);
    let (first, second, both) = pairs.fold((0, 0, 0), |(a, b, c), p| {
        let (x, y) = (p[0] == 0.0, p[1] == 0.0);
        (a + x as usize, b + y as usize, c + (x && y) as usize)
    });
    assert!(
        (1350..1650).contains(&first),
        "{first} of 5000 first halves"
    );
    assert!(
        (1350..1650).contains(&second),
        "{second} of 5000 second halves"
    );
    assert!(
        (380..520).contains(&both),
        "{both} of 5000 pairs both dropped"
    );
    // The same seed gives the same mask; another seed another one.
    assert_eq!(d.forward(&x, Mode::Train), y);
    d.reseed(43);
    assert_ne!(d.forward(&x, Mode::Train), y);
    assert_eq!(d.forward(&x, Mode::Eval).data, x.data);
}

/// A mask of odd length is the one a value longer would get, cut: its last value is the
/// low half of its last draw, as in the pairs before it (lengths across the 256-value
/// blocks the draws are made in).
#[test]
fn an_odd_dropout_mask_is_the_next_even_one_cut() {
    for len in [1, 3, 255, 257, 511, 1001] {
        let mut odd = vec![9.0f32; len];
        let mut even = vec![9.0f32; len + 1];
        Dropout::group_mask(0.5, 7, 3, &mut odd);
        Dropout::group_mask(0.5, 7, 3, &mut even);
        assert_eq!(odd[..], even[..len], "length {len}");
        assert!(odd.iter().all(|&v| v == 0.0 || v == 2.0), "length {len}");
    }
}

/// Reference values from PyTorch 2.15 (CPU), measured:
/// ```python
/// import torch
/// for cls in (torch.optim.Adam, torch.optim.AdamW):
///     w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
///     opt = cls([w], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
///     for g in ([0.5, -1.0, 0.25], [0.4, -0.5, -0.25], [0.1, 0.2, 0.3]):
///         w.grad = torch.tensor(g); opt.step()
///     print(cls.__name__, w.tolist())
/// ```
#[test]
fn adam_and_adamw_match_pytorch() {
    for (kind, want) in [
        (
            OptimizerKind::Adam,
            [0.712_037_324_9f64, -1.732_141_017_9, 0.337_484_568_4],
        ),
        (
            OptimizerKind::Adamw,
            [0.689_133_584_5, -1.690_631_151_2, 0.354_102_134_7],
        ),
    ] {
        let mut p = Param::new("weight", ParamRole::Weight, &[3]);
        p.value = vec![1.0, -2.0, 0.5];
        let mut opt = Optimizer::adam(kind, (0.9, 0.999), 1e-8, 0.1);
        for (t, g) in [[0.5, -1.0, 0.25], [0.4, -0.5, -0.25], [0.1, 0.2, 0.3]]
            .iter()
            .enumerate()
        {
            p.grad = g.to_vec();
            opt.step([&mut p], 0.1, t as u64 + 1);
        }
        for (got, want) in p.value.iter().zip(want) {
            assert!(
                (*got as f64 - want).abs() < 2e-6,
                "{kind:?}: {got} vs {want}"
            );
        }
    }
}
