//! The `cyclestudio` binary: parses the command line and hands it to the library.

use clap::Parser;
use cyclestudio::cli::{dispatch, Cli};

fn main() {
    // SAFETY: first thing in main, before any thread is started.
    unsafe { cyclestudio::ops::tune_cpu_runtime() };
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
