mod cli;

fn main() {
    let job = match cli::job::Job::start() {
        Ok(job) => job,
        Err(error) => {
            // Without MPI every process of the job says it; with a launcher's rank, only the first.
            if dma::distributed::launcher::rank().unwrap_or(0) == 0 {
                eprintln!("error: {error:#}");
            }
            std::process::exit(1);
        }
    };
    let ranks = job.ranks;
    match cli::main(ranks) {
        Ok(()) => job.exit_ok(),
        Err(error) => job.exit_with(error),
    }
}
