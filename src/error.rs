//! The one error type, and the exit code each kind of error gives the process.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | an internal error (a bug in convnet: please report it) |
//! | 2 | a bad flag, setting or model spec |
//! | 3 | a data set file that is missing, malformed or of the wrong shape |
//! | 4 | a saved model or checkpoint that cannot be used |
//! | 5 | a file or folder that cannot be read or written |
//! | 6 | training diverged (a NaN or infinite loss) |
//! | 7 | the run folder is in use by another process |
//! | 129, 130, 143 | stopped by SIGHUP, Ctrl-C (SIGINT), SIGTERM after writing a checkpoint |

use std::path::{Path, PathBuf};

/// Every error convnet reports. Each names the file, field or flag and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad option or hyper-parameter.
    #[error("{0}")]
    Config(String),
    /// A model spec that cannot be built.
    #[error("{0}")]
    Spec(String),
    /// A data file that is not what it should be.
    #[error("{}: {msg}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The data set is missing and could not be downloaded.
    #[error("{0}")]
    Fetch(String),
    /// A saved model or checkpoint that cannot be used.
    #[error("{}: {msg}", path.display())]
    Model {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A file that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Training produced a NaN or infinite loss.
    #[error("{0}")]
    Diverged(String),
    /// Another process is using the run folder.
    #[error("{0}")]
    Busy(String),
    /// Training was stopped by a signal and a checkpoint was written.
    #[error("{msg}")]
    Interrupted {
        /// The signal's number (2 for Ctrl-C); the exit code is 128 plus it.
        signal: i32,
        /// Where the run stopped.
        msg: String,
    },
    /// A bug: something convnet should have caught earlier.
    #[error("internal error: {0} (this is a bug in convnet; please report it)")]
    Internal(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    /// A data file `path` that is wrong in the way `msg` says.
    pub fn data(path: &Path, msg: impl Into<String>) -> Error {
        Error::Data {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    /// A model or checkpoint file `path` that is wrong in the way `msg` says.
    pub fn model(path: &Path, msg: impl Into<String>) -> Error {
        Error::Model {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// The process exit code for this error (see the table in the module docs).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Internal(_) => 1,
            Error::Config(_) | Error::Spec(_) => 2,
            Error::Data { .. } | Error::Fetch(_) => 3,
            Error::Model { .. } => 4,
            Error::Io { .. } => 5,
            Error::Diverged(_) => 6,
            Error::Busy(_) => 7,
            Error::Interrupted { signal, .. } => 128 + signal,
        }
    }
}

/// The exit codes, for `--help` and the README.
pub const EXIT_CODES: &str = "Exit codes: 0 success · 1 internal error (a bug) · 2 bad flag, setting or model spec · \
3 data set missing or malformed · 4 saved model or checkpoint unusable · 5 file cannot be read or written · \
6 training diverged · 7 run folder in use · 129/130/143 stopped by SIGHUP/Ctrl-C/SIGTERM (checkpoint written)";
