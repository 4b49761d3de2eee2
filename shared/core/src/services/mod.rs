//! The use cases. Every entry point (MCP tool, Lambda handler, CLI) calls these; no business
//! rule lives in a handler of an entry point.

pub mod agents;
pub mod controller;
pub mod conversation;
pub mod deployments;
pub mod evolution;
pub mod feedback;
pub mod fitness;
pub mod proposals;

/// Told how canaries and evolution runs move along: for metrics. Calls come after the change is
/// stored and must return at once.
pub trait ProgressObserver: Send + Sync {
    /// A canary was written: `before` is how it was (`None` when it started).
    fn canary(
        &self,
        _before: Option<&crate::deployment::Canary>,
        _after: &crate::deployment::Canary,
    ) {
    }

    /// An evolution run took a step (or finished): how it was and how it is.
    fn evolution(
        &self,
        _before: &crate::evolution::Evolution,
        _after: &crate::evolution::Evolution,
    ) {
    }
}

/// Tells no one.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgressObserver;

impl ProgressObserver for NoProgressObserver {}
