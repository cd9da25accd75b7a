//! `convnet serve`: the runs, sweeps and models under some folders, live in a browser.

use super::common::{install_ctrl_c, interrupted};
use crate::serve::{serve, Options};
use crate::Error;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Folders holding run folders and sweeps [default: runs].
    #[arg(value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// The address to listen on. The default serves this machine only; from elsewhere,
    /// forward a port: ssh -L 8080:localhost:8080 HOST.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on (0: any free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Folder holding the data sets, for confusion matrices (as in `convnet eval`).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<(), Error> {
    crate::threads::init_threads(0);
    let roots = if args.dirs.is_empty() {
        vec![PathBuf::from("runs")]
    } else {
        args.dirs
    };
    install_ctrl_c();
    serve(
        Options {
            roots,
            host: args.host,
            port: args.port,
            data: args.data,
        },
        &interrupted,
    )
}
