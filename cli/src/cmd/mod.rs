//! One module per subcommand; each exposes `run`, returning the process exit code.

pub(crate) mod bench;
pub(crate) mod cancel;
pub(crate) mod dashboard;
pub(crate) mod dead;
pub(crate) mod demo;
pub(crate) mod events;
pub(crate) mod executions;
pub(crate) mod gather;
pub(crate) mod inspect;
pub(crate) mod limit;
pub(crate) mod local;
pub(crate) mod map;
pub(crate) mod purge;
pub(crate) mod release;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod schedule;
pub(crate) mod status;
pub(crate) mod submit;
