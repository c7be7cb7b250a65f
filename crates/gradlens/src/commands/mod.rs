//! The subcommands beside `train` (its own module), as thin clients of the pipeline: `grads`
//! ([`grads`]), the benchmark ([`bench`]), sweeps ([`sweep`]), random checkpoints ([`init`]), reports
//! ([`report`]) and the fixtures' parity check ([`check`]).

pub mod bench;
pub mod check;
pub mod grads;
pub mod init;
pub mod report;
pub mod sweep;
