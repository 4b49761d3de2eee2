//! Ids with a prefix that says what they name (`ses_…`, `int_…`): a time-ordered UUID after it,
//! and a fallible constructor that names the field of a bad one.

macro_rules! prefixed_id {
    ($name:ident, $prefix:literal, $what:literal) => {
        #[doc = concat!("Id of a ", $what, ": `", $prefix, "` and a time-ordered UUID.")]
        #[derive(
            Debug,
            Clone,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            serde::Serialize,
            serde::Deserialize,
            schemars::JsonSchema,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn generate() -> Self {
                Self(format!(
                    concat!($prefix, "{}"),
                    uuid::Uuid::now_v7().simple()
                ))
            }

            /// # Errors
            /// A `FieldError` naming `field` when the text cannot be such an id.
            pub fn parse(field: &str, text: &str) -> Result<Self, $crate::error::FieldError> {
                Self::try_from(text.to_owned())
                    .map_err(|reason| $crate::error::FieldError::new(field, reason))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(text: String) -> Result<Self, Self::Error> {
                let ok = !text.is_empty()
                    && text.len() <= 64
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if ok {
                    Ok(Self(text))
                } else {
                    Err(format!(
                        concat!("'{}' is not a ", $what, " id"),
                        text.escape_debug()
                    ))
                }
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

pub(crate) use prefixed_id;
