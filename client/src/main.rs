//! `shoal`: drive and inspect a shoald node. See `shoal --help`.

mod cli;

use clap::Parser;
use shoal_client::error::exit;

fn main() {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal: starting the async runtime: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    let code = match runtime.block_on(cli::run(args)) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("shoal: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
