//! Classify image files with a trained model.
//!
//! cargo run --release --example classify -- MODEL IMAGE...
//!
//! MODEL is a run folder (`runs/...`) or a `.safetensors` file; each IMAGE a PNG or JPEG of
//! any size, prepared the way the model's training images were made.

fn main() -> Result<(), convnet::Error> {
    let mut args = std::env::args().skip(1);
    let Some(model) = args.next() else {
        eprintln!("usage: classify MODEL IMAGE...");
        std::process::exit(2);
    };
    let mut model = convnet::Model::load(&model)?;
    let mut failed = false;
    for file in args {
        match model.classify(&file) {
            Ok(p) => println!("{file}: {} ({:.1}%)", p.class, 100.0 * p.probability),
            Err(e) => {
                eprintln!("{file}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(3);
    }
    Ok(())
}
