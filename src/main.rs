mod cli;

fn main() {
    if let Err(error) = cli::main() {
        eprintln!("error: {error:#}");
        let interrupted = error.downcast_ref::<dma::checkpoint::run::Interrupted>().is_some();
        std::process::exit(if interrupted { cli::interrupt::EXIT_STATUS } else { 1 });
    }
}
