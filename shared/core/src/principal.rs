//! Who asks for a change: the authenticated caller (an API key's name, a token's subject), or
//! the platform itself. Services record it as `created_by`, reviewer or deployer; it never comes
//! from a tool's arguments.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An actor, by name.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Principal(String);

impl Principal {
    /// The caller when authentication is off (loopback, no keys).
    pub const ANONYMOUS: &'static str = "anonymous";
    /// The deployment controller, when it moves an alias.
    pub const CONTROLLER: &'static str = "system:deployment-controller";

    /// A caller named by the authentication layer. Control characters are dropped and the
    /// name is cut at 200 characters: it is stored and shown as is.
    pub fn named(name: &str) -> Self {
        let clean: String = name.chars().filter(|c| !c.is_control()).take(200).collect();
        if clean.trim().is_empty() {
            Self::anonymous()
        } else {
            Self(clean)
        }
    }

    pub fn anonymous() -> Self {
        Self(Self::ANONYMOUS.to_owned())
    }

    pub fn controller() -> Self {
        Self(Self::CONTROLLER.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_anonymous(&self) -> bool {
        self.0 == Self::ANONYMOUS
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
