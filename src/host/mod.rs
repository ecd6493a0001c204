//! The host side: what a host (a backup service, an orchestrator) runs against agents. The
//! agents' HTTP client ([`client`], over TCP or the agent's unix socket: [`unix`]), the reference
//! orchestrator of `quiesce snapshot` with its consistency groups ([`orchestrator`]), and
//! `quiesce status` ([`status`]). It reads Snapshots into the typed model of
//! [`crate::snapshot::model`].

pub mod client;
pub mod orchestrator;
pub mod status;
pub mod unix;
