//! Termination signals as a flag: SIGTERM (what Slurm, a container runtime or `kill` send before
//! they kill a process; Slurm's preemption and `scontrol requeue` too) and SIGUSR1 (what
//! `sbatch --signal=B:USR1@SECONDS` can send ahead of a time limit). A training run checks the
//! flag after each step and stops there, with a checkpoint, instead of dying mid-step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a termination signal has arrived (registered on first use).
#[derive(Clone)]
pub struct Termination(Arc<AtomicBool>);

impl Termination {
    /// Watch SIGTERM and SIGUSR1 from now on. Where the handlers cannot be installed, the flag
    /// simply never rises (the signals then act as before: the process ends).
    pub fn watch() -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        #[cfg(unix)]
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
            if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&flag)) {
                tracing::warn!("cannot watch signal {signal}: {e}");
            }
        }
        Self(flag)
    }

    /// Whether a termination signal has arrived.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
