//! `shoal`: the command-line client for shoald.
//!
//! The control API it drives is tracked in issue 5; today it only reports its version
//! so that the workspace layout and packaging are in place.
use clap::Parser;

/// Drive and inspect a shoal node (the control API is not implemented yet).
#[derive(Parser)]
#[command(name = "shoal", version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("shoal: the control API is not implemented yet; see `shoald --help` for the daemon");
    std::process::exit(2);
}
