//! Deployments: which versions an alias serves. Every move of an alias is a [`Deployment`]
//! record (who, why, from what to what, and the analysis behind it). A [`Canary`] routes a
//! growing share of new sessions to a candidate version and is promoted or rolled back on live
//! feedback by the rule in [`analysis`].

pub mod analysis;
pub mod policy;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::{AgentId, AliasRoute};
use crate::ids::prefixed_id;
use crate::principal::Principal;

pub use policy::CanaryPolicy;

prefixed_id!(DeploymentId, "dep_", "deployment");
prefixed_id!(CanaryId, "can_", "canary");

/// Why an alias moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    /// `deploy_version`: one version, all traffic.
    Deploy,
    CanaryStarted,
    CanaryStepAdvanced,
    /// The candidate got all traffic.
    CanaryPromoted,
    /// The baseline got all traffic back: by the rule, a guardrail, a timeout or by hand.
    CanaryRolledBack,
    /// `rollback_agent` outside a canary, or the bake period's impact check.
    Rollback,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::CanaryStarted => "canary_started",
            Self::CanaryStepAdvanced => "canary_step_advanced",
            Self::CanaryPromoted => "canary_promoted",
            Self::CanaryRolledBack => "canary_rolled_back",
            Self::Rollback => "rollback",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Deploy,
            Self::CanaryStarted,
            Self::CanaryStepAdvanced,
            Self::CanaryPromoted,
            Self::CanaryRolledBack,
            Self::Rollback,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// One move of an alias, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Deployment {
    pub deployment_id: DeploymentId,
    pub agent_id: AgentId,
    pub alias: String,
    pub kind: DeploymentKind,
    /// The routes before the move (empty for a new alias).
    pub from: Vec<AliasRoute>,
    pub to: Vec<AliasRoute>,
    /// Who or what moved it.
    pub actor: Principal,
    pub reason: String,
    /// The canary that moved it, if any.
    pub canary_id: Option<CanaryId>,
    /// The statistics that decided it, when a rule did.
    pub analysis: Option<serde_json::Value>,
    pub created_at: i64,
}

/// Where a canary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CanaryStatus {
    /// Serving a share of new sessions; the controller decides at every check.
    Running,
    /// Stopped deciding (a sample-ratio mismatch): promote or roll back by hand.
    Paused,
    /// Promoted; the bake period watches the new version against the old baseline.
    Baking,
    /// Promoted and through its bake period.
    Promoted,
    RolledBack,
}

impl CanaryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Baking => "baking",
            Self::Promoted => "promoted",
            Self::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Paused,
            Self::Baking,
            Self::Promoted,
            Self::RolledBack,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether the canary still holds its alias (no other canary may start on it).
    pub fn is_live(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }

    /// Whether the controller still looks at it.
    pub fn is_watched(self) -> bool {
        matches!(self, Self::Running | Self::Baking)
    }
}

/// The last thing the controller decided, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    pub at: i64,
    /// `hold`, `advance`, `promote`, `roll_back`, `pause`, `impact_negative`, `baked`.
    pub action: String,
    pub reason: String,
    pub analysis: serde_json::Value,
}

/// A canary: a candidate version taking a growing share of an alias's new sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Canary {
    pub canary_id: CanaryId,
    pub agent_id: AgentId,
    pub alias: String,
    /// The version the alias served before.
    pub baseline: u32,
    pub candidate: u32,
    pub policy: CanaryPolicy,
    pub status: CanaryStatus,
    /// Index into `policy.steps` of the current share.
    pub step: usize,
    pub started_at: i64,
    pub step_started_at: i64,
    pub updated_at: i64,
    /// Consecutive checks with the candidate over the hard error-rate limit.
    pub hard_limit_breaches: u32,
    pub last_decision: Option<Decision>,
    /// When it was promoted: the bake period's data starts here.
    pub promoted_at: Option<i64>,
    /// The baseline's score when it was promoted: what the bake period compares with.
    pub baseline_score: Option<f64>,
    pub finished_at: Option<i64>,
    pub started_by: Principal,
    /// Incremented by every change; writes compare it (two controllers never both act).
    pub revision: u64,
    /// Every decision's numbers, oldest first: the arms over time. Long canaries keep the
    /// recent half at full resolution and every other point of the older half.
    #[serde(default)]
    pub history: Vec<CheckPoint>,
}

/// One decision of a canary, as the arms stood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckPoint {
    pub at: i64,
    pub action: String,
    /// The candidate's share of new sessions when it was taken, percent.
    pub candidate_share: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_score: Option<f64>,
}

impl CheckPoint {
    /// The numbers of `decision`, taken while the candidate had `candidate_share` percent.
    pub fn of(decision: &Decision, candidate_share: u32) -> Self {
        // An arm without rated turns has no score yet (its mean reads 0).
        let score = |arm: &str| {
            let report = &decision.analysis[arm];
            let rated = report["rated_turns"].as_u64().is_none_or(|n| n > 0);
            report["score_mean"]
                .as_f64()
                .filter(|s| s.is_finite() && rated)
        };
        Self {
            at: decision.at,
            action: decision.action.clone(),
            candidate_share,
            baseline_score: score("baseline").or_else(|| {
                decision.analysis["baseline_score"]
                    .as_f64()
                    .filter(|s| s.is_finite())
            }),
            candidate_score: score("candidate"),
        }
    }
}

/// Points a canary's history keeps before thinning its older half.
const HISTORY_POINTS: usize = 512;

impl Canary {
    /// Records a decision: the last one, and a point of the history.
    pub fn decided(&mut self, decision: Decision) {
        let point = CheckPoint::of(&decision, self.candidate_weight());
        if self.history.len() >= HISTORY_POINTS {
            let half = self.history.len() / 2;
            let mut i = 0;
            self.history.retain(|_| {
                i += 1;
                i > half || i % 2 == 0
            });
        }
        self.history.push(point);
        self.last_decision = Some(decision);
    }

    /// The candidate's current share of new sessions, in percent.
    pub fn candidate_weight(&self) -> u32 {
        self.policy.steps.get(self.step).copied().unwrap_or(100)
    }

    /// The alias routes the canary's current step stands for.
    pub fn routes(&self) -> Vec<AliasRoute> {
        split(self.baseline, self.candidate, self.candidate_weight())
    }
}

/// `baseline` at `100 - weight`, `candidate` at `weight`; a weight of 0 or 100 is one route.
pub fn split(baseline: u32, candidate: u32, weight: u32) -> Vec<AliasRoute> {
    match weight {
        0 => vec![AliasRoute {
            version: baseline,
            weight: 100,
        }],
        w if w >= 100 => vec![AliasRoute {
            version: candidate,
            weight: 100,
        }],
        w => vec![
            AliasRoute {
                version: baseline,
                weight: 100 - w,
            },
            AliasRoute {
                version: candidate,
                weight: w,
            },
        ],
    }
}

/// One top-level agent turn, as the canary's statistics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSample {
    pub version: u32,
    pub failed: bool,
    pub latency_ms: u64,
    pub cost_usd: Option<f64>,
    /// Mean normalised rating per metric over the feedback given on the turn; empty when none.
    pub ratings: Vec<(String, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(at: i64, baseline: f64, candidate: f64) -> Decision {
        Decision {
            at,
            action: "hold".into(),
            reason: "not enough data".into(),
            analysis: serde_json::json!({
                "baseline": {"score_mean": baseline},
                "candidate": {"score_mean": candidate},
            }),
        }
    }

    #[test]
    fn every_decision_is_a_point_of_the_history_and_long_ones_thin_their_past() {
        let agent = AgentId::try_from("agt_a".to_owned()).unwrap();
        let mut canary = crate::samples::canary(&agent, 0);
        let mut unrated = decision(30_000, 0.0, 0.0);
        unrated.analysis["baseline"]["rated_turns"] = 0.into();
        unrated.analysis["candidate"]["rated_turns"] = 0.into();
        canary.decided(unrated);
        assert_eq!(
            (
                canary.history[0].baseline_score,
                canary.history[0].candidate_score
            ),
            (None, None),
            "no score before the first rating"
        );
        canary.history.clear();
        canary.decided(decision(60_000, 0.5, 0.75));
        assert_eq!(
            canary.history,
            [CheckPoint {
                at: 60_000,
                action: "hold".into(),
                candidate_share: canary.candidate_weight(),
                baseline_score: Some(0.5),
                candidate_score: Some(0.75),
            }]
        );
        assert_eq!(canary.last_decision.as_ref().unwrap().at, 60_000);
        for n in 2..=2_000 {
            canary.decided(decision(n * 60_000, 0.5, 0.6));
        }
        assert!(
            canary.history.len() <= HISTORY_POINTS,
            "{}",
            canary.history.len()
        );
        assert_eq!(
            canary.history.last().unwrap().at,
            2_000 * 60_000,
            "the newest is kept"
        );
        assert_eq!(canary.history[0].at % 60_000, 0);
        let ats: Vec<i64> = canary.history.iter().map(|p| p.at).collect();
        assert!(ats.windows(2).all(|w| w[0] < w[1]), "in order");
        let recent = &ats[ats.len() - 100..];
        assert!(
            recent.windows(2).all(|w| w[1] - w[0] == 60_000),
            "the recent past at full resolution"
        );
    }
}
