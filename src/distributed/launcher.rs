//! What an MPI launcher (`mpirun` of Open MPI or MPICH, Slurm's `srun`) tells each process it starts, read from
//! the environment before MPI itself is started: whether this process is one of several, its rank, and its rank
//! on its own node (which GPU it takes).

/// The first of `names` set to a number.
fn number(names: &[&str]) -> Option<usize> {
    names.iter().find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// How many processes the launcher started, if this process was started by one.
pub fn size() -> Option<usize> {
    // Slurm's variables count only in a job step (srun), not in the batch script that holds the allocation.
    let slurm_step = std::env::var_os("SLURM_STEP_ID").is_some().then_some("SLURM_STEP_NUM_TASKS");
    number(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"]).or_else(|| slurm_step.and_then(|n| number(&[n])))
}

/// This process's rank among them.
pub fn rank() -> Option<usize> {
    let slurm_step = std::env::var_os("SLURM_STEP_ID").is_some().then_some("SLURM_PROCID");
    number(&["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK"]).or_else(|| slurm_step.and_then(|n| number(&[n])))
}

/// This process's rank among those on its node: the GPU `--device cuda` gives it.
pub fn local_rank() -> Option<usize> {
    number(&["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"])
}
