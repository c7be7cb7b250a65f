//! The Slurm tests' switch (`--cfg slurm`), the rule in slurm_cfg.rs.

include!("slurm_cfg.rs");

fn main() {
    slurm_cfg();
}
