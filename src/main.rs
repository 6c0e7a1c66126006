mod cli;

fn main() {
    if let Err(error) = cli::main() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
