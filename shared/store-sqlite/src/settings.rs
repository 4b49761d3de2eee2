//! The embedded store's settings: where its database lives.

use std::path::PathBuf;

use aop_config::{Kind, Section, Setting};
use serde::{Deserialize, Serialize};

/// `database.data_dir`: the directory of the embedded store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteSettings {
    pub data_dir: PathBuf,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./.aop"),
        }
    }
}

impl Section for SqliteSettings {
    const NAME: &'static str = "database";
    const SETTINGS: &'static [Setting] = &[Setting::new("data_dir", "AOP_DATA_DIR", Kind::Text)];
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
