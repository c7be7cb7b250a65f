//! Sinks: the run's outputs — JSONL files claimed, locked, appended line by line and resumed,
//! atomic writes ([`output`]), and the provenance every output records ([`provenance`]).

pub mod output;
pub mod provenance;
