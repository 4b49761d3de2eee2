//! The embedded store's settings: where its database lives, and how durable a commit is.

use std::path::PathBuf;

use aop_config::{Kind, Problems, Section, Setting};
use serde::{Deserialize, Serialize};

/// `database.data_dir`: the directory of the embedded store; `database.sqlite_synchronous`:
/// `full` (an acknowledged write survives a power loss) or `normal` (faster; the last commits
/// before a power loss may vanish, a process crash loses nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteSettings {
    pub data_dir: PathBuf,
    pub sqlite_synchronous: String,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./.aop"),
            sqlite_synchronous: "full".into(),
        }
    }
}

impl SqliteSettings {
    /// Whether every commit waits for the disk (`full`).
    pub fn durable(&self) -> bool {
        !self.sqlite_synchronous.eq_ignore_ascii_case("normal")
    }
}

impl Section for SqliteSettings {
    const NAME: &'static str = "database";
    const SETTINGS: &'static [Setting] = &[
        Setting::new("data_dir", "AOP_DATA_DIR", Kind::Text),
        Setting::new("sqlite_synchronous", "AOP_SQLITE_SYNCHRONOUS", Kind::Text)
            .expecting("full or normal"),
    ];

    fn check(&self, problems: &mut Problems) {
        if !["full", "normal"].contains(&self.sqlite_synchronous.to_ascii_lowercase().as_str()) {
            problems.push("sqlite_synchronous", "must be full or normal");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_field_is_a_setting() {
        assert_eq!(
            aop_config::undeclared::<super::SqliteSettings>(),
            Vec::<String>::new()
        );
    }
}
