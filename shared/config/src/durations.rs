//! Durations as whole numbers of a unit in settings: `#[serde(with = "aop_config::millis")]`.

macro_rules! unit {
    ($name:ident, $from:path, $to:ident, $doc:literal) => {
        #[doc = $doc]
        pub mod $name {
            use std::time::Duration;

            use serde::{Deserialize, Deserializer, Serializer};

            /// # Errors
            /// When the serializer fails.
            pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u64(u64::try_from(d.$to()).unwrap_or(u64::MAX))
            }

            /// # Errors
            /// When the value is not a whole number.
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
                u64::deserialize(d).map($from)
            }
        }
    };
}

unit!(
    millis,
    Duration::from_millis,
    as_millis,
    "A duration in whole milliseconds."
);
unit!(
    seconds,
    Duration::from_secs,
    as_secs,
    "A duration in whole seconds."
);
