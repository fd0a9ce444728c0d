//! The `cyclestudio` binary: parses the command line and hands it to the library.

use clap::Parser;
use cyclestudio::cli::{dispatch, Cli};

fn main() {
    // Before anything runs: this may start the program again in place.
    cyclestudio::ops::use_huge_pages();
    // SAFETY: first thing in main after that, before any thread is started.
    unsafe { cyclestudio::ops::tune_cpu_runtime() };
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
