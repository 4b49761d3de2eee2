//! Layered settings. Each adapter owns its settings type: a serde struct with its defaults
//! (`Default`) and its checks, declared as a [`Section`] with the environment variable of every
//! setting. The composition root reads every section through one [`Loader`]:
//! defaults < config file < environment < command-line flags. Every problem is reported at once,
//! each naming the setting, its variable and where its value came from; secret values are never
//! echoed.

mod durations;
mod loader;
pub mod redact;
mod section;

pub use durations::{millis, seconds};
pub use loader::{ConfigError, Loader, Overrides};
pub use section::{Kind, Problems, Section, Setting, help_lines, undeclared};
