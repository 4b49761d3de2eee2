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
