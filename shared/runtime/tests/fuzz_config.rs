//! Fuzz: `config.yaml` as a user (or a mistake) might write it. Any file loads or is refused
//! with errors that name what is wrong, each short, and none echoes a credential inside a URL.
//! Inputs: `tests/corpus/config-yaml` and its mutations (`AOP_FUZZ_CASES`).

use std::collections::BTreeMap;

use aop_runtime::{Config, Overrides};
use aop_test_support::fuzz;
use proptest::prelude::*;

fn load(text: &[u8]) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    Config::from_sources(Some(&path), &BTreeMap::new(), &Overrides::default())
        .map_err(|e| e.to_string())
}

#[test]
fn every_seed_is_a_configuration_that_loads() {
    for seed in fuzz::corpus("config-yaml") {
        if let Err(e) = load(&seed) {
            panic!("{}\n{e}", String::from_utf8_lossy(&seed));
        }
    }
}

proptest! {
    #![proptest_config(fuzz::config())]

    #[test]
    fn any_file_loads_or_is_refused_saying_why(input in fuzz::inputs(fuzz::corpus("config-yaml"))) {
        if let Err(message) = load(&input) {
            prop_assert!(!message.trim().is_empty());
            for line in message.lines() {
                prop_assert!(line.chars().count() <= 1_000, "an error line of {} chars", line.len());
            }
            // The seeds carry no credentials, but a mutation can make one: `user:pass@` is
            // never shown.
            prop_assert!(!message.contains(":pass@"), "{message}");
        }
    }
}
