//! Running a job's agent: the workspace it works in ([`workspace`]) and the agent process ([`command`]).

pub mod command;
pub mod git;
pub mod result;
pub mod workspace;
