//! The `convnet` command: one module per subcommand under `src/cli/`.

mod cli;

fn main() {
    std::process::exit(cli::run());
}
