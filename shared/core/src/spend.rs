//! Daily spend caps on agent turns: how many US dollars of model calls one agent, and one caller,
//! may spend in a UTC day. A turn is refused before its first model call once the agent or the
//! caller has reached its cap; the turns already running finish, so the day's total can pass
//! the cap by what those turns cost.

use std::collections::BTreeMap;

use crate::agent::AgentId;
use crate::principal::Principal;

const DAY_MS: i64 = 86_400_000;

/// Whose spending a sum counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spender<'a> {
    /// The turns an agent ran, delegated ones included.
    Agent(&'a AgentId),
    /// The turns a caller asked for, delegated ones included.
    Caller(&'a Principal),
}

/// The caps in force; every one absent means no cap (and no lookup).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpendCaps {
    /// Each agent's daily cap in US dollars, unless `agents` names its own.
    pub per_agent_usd: Option<f64>,
    /// Each caller's daily cap in US dollars.
    pub per_caller_usd: Option<f64>,
    /// Agents with a cap of their own.
    pub agents: BTreeMap<AgentId, f64>,
    /// Callers (API key names, token subjects) with a cap of their own.
    pub callers: BTreeMap<Principal, f64>,
}

impl SpendCaps {
    /// The cap on one agent.
    pub fn agent(&self, agent_id: &AgentId) -> Option<f64> {
        self.agents.get(agent_id).copied().or(self.per_agent_usd)
    }

    /// The cap on one caller.
    pub fn caller(&self, caller: &Principal) -> Option<f64> {
        self.callers.get(caller).copied().or(self.per_caller_usd)
    }
}

/// The start (epoch ms) of the UTC day holding `now_ms`.
pub fn day_start(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(DAY_MS)
}

/// Parses per-agent caps written `agent_id=usd`; the error names the entry and the reason.
///
/// # Errors
/// An entry without `=`, with an invalid agent id, or with an amount that is not a finite
/// number of at least zero.
pub fn parse_agent_caps(entries: &[String]) -> Result<BTreeMap<AgentId, f64>, String> {
    let mut caps = BTreeMap::new();
    for entry in entries {
        let Some((id, amount)) = entry.split_once('=') else {
            return Err(format!("'{}' must be written agent_id=usd", cut(entry)));
        };
        let id = AgentId::try_from(id.trim().to_owned())
            .map_err(|e| format!("'{}' names no valid agent id: {e}", cut(entry)))?;
        let amount = amount_of(entry, amount)?;
        caps.insert(id, amount);
    }
    Ok(caps)
}

/// Parses per-caller caps written `name=usd` (the API key's name or the token's subject).
///
/// # Errors
/// An entry without `=`, with an empty name, or with an amount that is not a finite number of
/// at least zero.
pub fn parse_caller_caps(entries: &[String]) -> Result<BTreeMap<Principal, f64>, String> {
    let mut caps = BTreeMap::new();
    for entry in entries {
        let Some((name, amount)) = entry.rsplit_once('=') else {
            return Err(format!("'{}' must be written name=usd", cut(entry)));
        };
        if name.trim().is_empty() {
            return Err(format!("'{}' names no caller", cut(entry)));
        }
        caps.insert(Principal::named(name.trim()), amount_of(entry, amount)?);
    }
    Ok(caps)
}

fn amount_of(entry: &str, amount: &str) -> Result<f64, String> {
    amount
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|a| a.is_finite() && *a >= 0.0)
        .ok_or_else(|| {
            format!(
                "'{}': the amount must be a number of US dollars, at least 0",
                cut(entry)
            )
        })
}

/// An entry as quoted in an error: at most 60 characters.
fn cut(entry: &str) -> String {
    entry.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_starts_at_utc_midnight() {
        // 2026-12-05T10:39:21Z
        let now = 1_796_467_161_000;
        assert_eq!(day_start(now), 1_796_428_800_000);
        assert_eq!(day_start(1_796_428_800_000), 1_796_428_800_000);
        assert_eq!(day_start(1_796_428_799_999), 1_796_428_800_000 - DAY_MS);
    }

    #[test]
    fn an_agent_of_its_own_overrides_the_default() {
        let caps = SpendCaps {
            per_agent_usd: Some(5.0),
            per_caller_usd: Some(1.0),
            agents: parse_agent_caps(&["researcher=0.5".to_owned()]).unwrap(),
            callers: parse_caller_caps(&["batch-job=20".to_owned()]).unwrap(),
        };
        assert_eq!(caps.caller(&Principal::named("batch-job")), Some(20.0));
        assert_eq!(caps.caller(&Principal::named("alice")), Some(1.0));
        assert!(
            parse_caller_caps(&["=3".to_owned()])
                .unwrap_err()
                .contains("names no caller")
        );
        let researcher = AgentId::try_from("researcher".to_owned()).unwrap();
        let other = AgentId::try_from("writer".to_owned()).unwrap();
        assert_eq!(caps.agent(&researcher), Some(0.5));
        assert_eq!(caps.agent(&other), Some(5.0));
        assert_eq!(SpendCaps::default().agent(&other), None);
    }

    #[test]
    fn bad_agent_caps_name_the_entry() {
        let err = parse_agent_caps(&["researcher".to_owned()]).unwrap_err();
        assert!(
            err.contains("'researcher' must be written agent_id=usd"),
            "{err}"
        );
        let err = parse_agent_caps(&["researcher=-1".to_owned()]).unwrap_err();
        assert!(err.contains("at least 0"), "{err}");
        let err = parse_agent_caps(&["researcher=NaN".to_owned()]).unwrap_err();
        assert!(err.contains("'researcher=NaN'"), "{err}");
        let err = parse_agent_caps(&["Bad Id=1".to_owned()]).unwrap_err();
        assert!(err.contains("no valid agent id"), "{err}");
    }
}
