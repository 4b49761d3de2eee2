//! What model tokens cost, for the cost of each interaction.

use std::collections::HashMap;

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrice {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

/// Prices by model name. A model without a price costs nothing and is reported as unpriced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable(HashMap<String, ModelPrice>);

impl PriceTable {
    /// Published list prices of common OpenAI models (USD per million tokens).
    pub fn openai_defaults() -> Self {
        let mut table = Self::default();
        for (model, input, output) in [
            ("gpt-4o", 2.50, 10.00),
            ("gpt-4o-mini", 0.15, 0.60),
            ("gpt-4.1", 2.00, 8.00),
            ("gpt-4.1-mini", 0.40, 1.60),
            ("gpt-4.1-nano", 0.10, 0.40),
        ] {
            table.set(model, input, output);
        }
        table
    }

    pub fn set(&mut self, model: &str, input_per_million: f64, output_per_million: f64) {
        self.0.insert(
            model.to_owned(),
            ModelPrice {
                input_per_million,
                output_per_million,
            },
        );
    }

    /// Parses `model=input/output` entries separated by commas, such as
    /// `gpt-4o=2.5/10,llama3=0/0`, on top of `self`.
    ///
    /// # Errors
    /// The entry that does not parse, and why.
    pub fn extend_from_spec(&mut self, spec: &str) -> Result<(), String> {
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let parsed = entry.split_once('=').and_then(|(model, prices)| {
                let (i, o) = prices.split_once('/')?;
                let i: f64 = i.trim().parse().ok()?;
                let o: f64 = o.trim().parse().ok()?;
                (i >= 0.0 && o >= 0.0 && !model.trim().is_empty()).then(|| (model.trim(), i, o))
            });
            match parsed {
                Some((model, i, o)) => self.set(model, i, o),
                None => {
                    return Err(format!(
                        "'{entry}' is not model=input/output (USD per million tokens)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The cost of a call, or `None` when the model has no price.
    pub fn cost(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> Option<f64> {
        let price = self.0.get(model).or_else(|| {
            // Providers report dated snapshots (`gpt-4o-mini-2024-07-18`); price them as the
            // family they belong to.
            self.0
                .iter()
                .filter(|(name, _)| model.starts_with(&format!("{name}-")))
                .max_by_key(|(name, _)| name.len())
                .map(|(_, p)| p)
        })?;
        Some(
            (prompt_tokens as f64 * price.input_per_million
                + completion_tokens as f64 * price.output_per_million)
                / 1_000_000.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_known_models_and_their_snapshots() {
        let t = PriceTable::openai_defaults();
        let c = t.cost("gpt-4o-mini", 1_000_000, 1_000_000).unwrap();
        assert!((c - 0.75).abs() < 1e-9, "{c}");
        let snapshot = t.cost("gpt-4o-mini-2024-07-18", 2_000_000, 0).unwrap();
        assert!((snapshot - 0.30).abs() < 1e-9, "{snapshot}");
        assert_eq!(t.cost("llama3", 10, 10), None);
    }

    #[test]
    fn spec_entries_extend_and_bad_ones_are_named() {
        let mut t = PriceTable::default();
        t.extend_from_spec("llama3=0/0, mine=1.5/2").unwrap();
        assert_eq!(t.cost("llama3", 100, 100), Some(0.0));
        assert_eq!(t.cost("mine", 1_000_000, 0), Some(1.5));
        let err = t.extend_from_spec("oops=1").unwrap_err();
        assert!(err.contains("'oops=1'"), "{err}");
    }
}
