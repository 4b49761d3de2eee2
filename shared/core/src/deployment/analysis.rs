//! The canary decision rule, as pure functions of the arms' statistics, the canary's state and
//! the time, so a simulation can drive it with a seeded generator and no wall clock.
//!
//! - Primary metric: a turn's score (its mean normalised rating, or a weighted objective). With
//!   Δ = mean_B − mean_A and se² = var_A/n_A + var_B/n_B: P(B > A) = Φ(Δ/se) and the expected
//!   loss of shipping B is se·φ(Δ/se) − Δ·Φ(−Δ/se). Promote when each arm has the minimum rated
//!   turns, P(B > A) and the relative expected loss pass their thresholds, the always-valid
//!   confidence sequence for Δ lies above 0, and no guardrail failed; roll back on the mirror
//!   image. The confidence sequence is what makes checking every few minutes safe: P(B > A)
//!   alone, watched continuously, crosses 0.95 for an equal candidate about half the time.
//! - Guardrails, judged with always-valid confidence sequences: the error rate must not rise,
//!   mean latency may be at most `max_latency_increase` worse, cost per turn at most
//!   `max_cost_increase`; plus a hard error-rate limit failing after `hard_limit_checks`
//!   consecutive checks over it.
//! - A sample-ratio mismatch on the current step's sessions (an anytime-valid test, p < `srm_p`)
//!   pauses the canary.
//! - Steps advance after `step_min_seconds` and `step_min_sessions` with guardrails green; no
//!   decision after `timeout_seconds` rolls back as inconclusive.
//! - After promotion, the bake period compares the new version with the baseline's score at
//!   promotion; a relative drop worse than `bake_max_drop` is a negative impact.

use serde::Serialize;

use super::{Canary, CanaryStatus, Decision, DeploymentKind, TurnSample, split};
use crate::agent::AliasRoute;
use crate::deployment::CanaryPolicy;
use crate::stats::{Comparison, Summary, compare, cs_half_width, sample_ratio_p};

/// Turns below which the hard error-rate limit is not judged.
const HARD_LIMIT_MIN_TURNS: u64 = 20;
/// Sessions below which the sample-ratio test is not judged.
const SRM_MIN_SESSIONS: u64 = 20;

/// One arm's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Arm {
    pub version: u32,
    pub turns: u64,
    pub errors: u64,
    pub latency: Summary,
    pub cost: Summary,
    pub score: Summary,
}

impl Arm {
    pub fn error_rate(&self) -> f64 {
        if self.turns == 0 {
            0.0
        } else {
            self.errors as f64 / self.turns as f64
        }
    }

    fn errors(&self) -> Summary {
        // Bernoulli values as a summary: mean p, m2 = n·p·(1 − p).
        let p = self.error_rate();
        Summary {
            n: self.turns,
            mean: p,
            m2: self.turns as f64 * p * (1.0 - p),
        }
    }

    /// Adds one turn.
    pub fn push(&mut self, turn: &TurnSample, policy: &CanaryPolicy) {
        self.turns += 1;
        if turn.failed {
            self.errors += 1;
        } else {
            self.latency.push(turn.latency_ms as f64);
            if let Some(cost) = turn.cost_usd {
                self.cost.push(cost);
            }
        }
        if let Some(score) = policy.score(&turn.ratings) {
            self.score.push(score);
        }
    }
}

/// The arms of `baseline` and `candidate` from turn samples (others are ignored).
pub fn arms(
    samples: &[TurnSample],
    baseline: u32,
    candidate: u32,
    policy: &CanaryPolicy,
) -> (Arm, Arm) {
    let mut a = Arm {
        version: baseline,
        ..Arm::default()
    };
    let mut b = Arm {
        version: candidate,
        ..Arm::default()
    };
    for s in samples {
        if s.version == baseline {
            a.push(s, policy);
        } else if s.version == candidate {
            b.push(s, policy);
        }
    }
    (a, b)
}

/// An arm as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmReport {
    pub version: u32,
    pub turns: u64,
    pub error_rate: f64,
    pub latency_ms_mean: f64,
    pub cost_usd_mean: Option<f64>,
    pub rated_turns: u64,
    pub score_mean: f64,
    pub score_variance: f64,
}

impl From<&Arm> for ArmReport {
    fn from(a: &Arm) -> Self {
        Self {
            version: a.version,
            turns: a.turns,
            error_rate: a.error_rate(),
            latency_ms_mean: a.latency.mean,
            cost_usd_mean: (a.cost.n > 0).then_some(a.cost.mean),
            rated_turns: a.score.n,
            score_mean: a.score.mean,
            score_variance: a.score.variance(),
        }
    }
}

/// One guardrail at one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guardrail {
    pub name: &'static str,
    /// `ok`, `failed`, or `pending` (not enough data yet).
    pub status: &'static str,
    pub detail: String,
}

/// Everything a check computed: what the decision is recorded with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub baseline: ArmReport,
    pub candidate: ArmReport,
    pub delta: f64,
    pub se: f64,
    pub prob_better: f64,
    pub expected_loss: f64,
    pub relative_loss: f64,
    /// Always-valid interval for the candidate's score minus the baseline's.
    pub delta_interval: [f64; 2],
    pub guardrails: Vec<Guardrail>,
    /// Sessions of the current step per arm, and the sample-ratio test's p-value.
    pub step_sessions: [u64; 2],
    pub srm_p: Option<f64>,
}

/// What a check decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Hold(String),
    Advance(String),
    Promote(String),
    RollBack(String),
    Pause(String),
}

impl Verdict {
    pub fn action(&self) -> &'static str {
        match self {
            Self::Hold(_) => "hold",
            Self::Advance(_) => "advance",
            Self::Promote(_) => "promote",
            Self::RollBack(_) => "roll_back",
            Self::Pause(_) => "pause",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Hold(r)
            | Self::Advance(r)
            | Self::Promote(r)
            | Self::RollBack(r)
            | Self::Pause(r) => r,
        }
    }
}

/// The result of a check: the verdict, its analysis and the hard-limit breach count to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub verdict: Verdict,
    pub analysis: Analysis,
    pub hard_limit_breaches: u32,
}

/// Decides a running canary. `step_sessions` are the sessions started in the current step on
/// the baseline and on the candidate.
pub fn decide(canary: &Canary, a: &Arm, b: &Arm, step_sessions: [u64; 2], now: i64) -> Check {
    let policy = &canary.policy;
    let cmp = compare(&a.score, &b.score);
    let wa = cs_half_width(a.score.n, a.score.variance(), policy.alpha / 2.0);
    let wb = cs_half_width(b.score.n, b.score.variance(), policy.alpha / 2.0);
    let interval = [cmp.delta - wa - wb, cmp.delta + wa + wb];
    let relative_loss = if a.score.mean > 0.0 {
        cmp.expected_loss / a.score.mean
    } else {
        cmp.expected_loss
    };
    let (guardrails, breaches) = guardrails(canary, a, b);
    let weight = canary.candidate_weight();
    let srm_p = if step_sessions[0] + step_sessions[1] >= SRM_MIN_SESSIONS {
        sample_ratio_p(step_sessions, [f64::from(100 - weight), f64::from(weight)])
    } else {
        None
    };
    let analysis = Analysis {
        baseline: a.into(),
        candidate: b.into(),
        delta: cmp.delta,
        se: cmp.se,
        prob_better: cmp.prob_better,
        expected_loss: cmp.expected_loss,
        relative_loss,
        delta_interval: interval,
        guardrails,
        step_sessions,
        srm_p,
    };
    let verdict = verdict(canary, a, b, &cmp, &analysis, now);
    Check {
        verdict,
        analysis,
        hard_limit_breaches: breaches,
    }
}

fn verdict(
    canary: &Canary,
    a: &Arm,
    b: &Arm,
    cmp: &Comparison,
    analysis: &Analysis,
    now: i64,
) -> Verdict {
    let policy = &canary.policy;
    if let Some(failed) = analysis.guardrails.iter().find(|g| g.status == "failed") {
        return Verdict::RollBack(format!(
            "guardrail {} failed: {}",
            failed.name, failed.detail
        ));
    }
    if let Some(p) = analysis.srm_p
        && p < policy.srm_p
    {
        return Verdict::Pause(format!(
            "sample-ratio mismatch: sessions {:?} for a {}/{} split (p = {p:.2e})",
            analysis.step_sessions,
            100 - canary.candidate_weight(),
            canary.candidate_weight()
        ));
    }
    let enough = a.score.n >= policy.min_rated_turns && b.score.n >= policy.min_rated_turns;
    if enough
        && cmp.prob_better >= policy.promote_probability
        && analysis.relative_loss <= policy.max_relative_loss
        && analysis.delta_interval[0] > 0.0
    {
        return Verdict::Promote(format!(
            "P(candidate better) = {:.3}, relative expected loss {:.4}%, score {:.3} vs {:.3} over {} and {} rated turns",
            cmp.prob_better,
            analysis.relative_loss * 100.0,
            b.score.mean,
            a.score.mean,
            b.score.n,
            a.score.n
        ));
    }
    if enough && cmp.prob_better <= policy.rollback_probability && analysis.delta_interval[1] < 0.0
    {
        return Verdict::RollBack(format!(
            "P(candidate better) = {:.3}: score {:.3} vs {:.3} over {} and {} rated turns",
            cmp.prob_better, b.score.mean, a.score.mean, b.score.n, a.score.n
        ));
    }
    let age = now - canary.started_at;
    if age >= seconds(policy.timeout_seconds) {
        return Verdict::RollBack(format!(
            "inconclusive after {} h: P(candidate better) = {:.3} over {} and {} rated turns",
            age / 3_600_000,
            cmp.prob_better,
            b.score.n,
            a.score.n
        ));
    }
    let last_step = canary.step + 1 >= policy.steps.len();
    let step_age = now - canary.step_started_at;
    let step_sessions = analysis.step_sessions[0] + analysis.step_sessions[1];
    if !last_step
        && step_age >= seconds(policy.step_min_seconds)
        && step_sessions >= policy.step_min_sessions
    {
        return Verdict::Advance(format!(
            "{} s and {step_sessions} sessions at {}% with guardrails green",
            step_age / 1000,
            canary.candidate_weight()
        ));
    }
    Verdict::Hold(format!(
        "waiting: {} and {} rated turns, P(candidate better) = {:.3}",
        b.score.n, a.score.n, cmp.prob_better
    ))
}

fn seconds(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The guardrails at this check, and the hard-limit breach count after it.
fn guardrails(canary: &Canary, a: &Arm, b: &Arm) -> (Vec<Guardrail>, u32) {
    let policy = &canary.policy;
    let alpha = policy.alpha / 2.0;
    let mut out = Vec::with_capacity(4);
    // No rise in the error rate: the interval for p_B − p_A lies above 0 to fail.
    let (ea, eb) = (a.errors(), b.errors());
    // Rates of 0 have no spread; a floor keeps the sequence from claiming certainty.
    let var = |s: &Summary| s.variance().max(0.25 / (s.n.max(1) as f64));
    let lower = (eb.mean - cs_half_width(eb.n, var(&eb), alpha))
        - (ea.mean + cs_half_width(ea.n, var(&ea), alpha));
    out.push(if a.turns == 0 || b.turns == 0 {
        pending("error_rate", "no turns on an arm yet")
    } else if lower > 0.0 {
        failed(
            "error_rate",
            format!(
                "{:.2}% vs {:.2}%: the rise is beyond doubt",
                b.error_rate() * 100.0,
                a.error_rate() * 100.0
            ),
        )
    } else {
        ok(
            "error_rate",
            format!(
                "{:.2}% vs {:.2}%",
                b.error_rate() * 100.0,
                a.error_rate() * 100.0
            ),
        )
    });
    out.push(ratio_guardrail(
        "latency",
        &a.latency,
        &b.latency,
        policy.max_latency_increase,
        alpha,
    ));
    out.push(ratio_guardrail(
        "cost",
        &a.cost,
        &b.cost,
        policy.max_cost_increase,
        alpha,
    ));
    // Over the hard limit beyond doubt: the always-valid lower bound of the candidate's rate.
    let lower_rate = eb.mean - cs_half_width(eb.n, var(&eb), alpha);
    let over = b.turns >= HARD_LIMIT_MIN_TURNS && lower_rate > policy.max_error_rate;
    let breaches = if over {
        canary.hard_limit_breaches + 1
    } else {
        0
    };
    out.push(if breaches >= policy.hard_limit_checks {
        failed(
            "error_rate_limit",
            format!(
                "{:.2}% over the {:.2}% limit at {breaches} consecutive checks",
                b.error_rate() * 100.0,
                policy.max_error_rate * 100.0
            ),
        )
    } else if over {
        pending(
            "error_rate_limit",
            format!(
                "{:.2}% over the {:.2}% limit ({breaches} of {} checks)",
                b.error_rate() * 100.0,
                policy.max_error_rate * 100.0,
                policy.hard_limit_checks
            ),
        )
    } else {
        ok(
            "error_rate_limit",
            format!("{:.2}%", b.error_rate() * 100.0),
        )
    });
    (out, breaches)
}

/// Fails when the candidate's mean is beyond doubt more than `1 + tolerance` times the
/// baseline's.
fn ratio_guardrail(
    name: &'static str,
    a: &Summary,
    b: &Summary,
    tolerance: f64,
    alpha: f64,
) -> Guardrail {
    if a.n < 2 || b.n < 2 {
        return pending(name, "not enough turns with a value yet");
    }
    let lower = (b.mean - cs_half_width(b.n, b.variance(), alpha))
        - (1.0 + tolerance) * (a.mean + cs_half_width(a.n, a.variance(), alpha));
    let change = if a.mean > 0.0 {
        b.mean / a.mean - 1.0
    } else {
        0.0
    };
    let detail = format!(
        "{:+.1}% ({:.4} vs {:.4}), limit {:+.0}%",
        change * 100.0,
        b.mean,
        a.mean,
        tolerance * 100.0
    );
    if lower > 0.0 {
        failed(name, detail)
    } else {
        ok(name, detail)
    }
}

fn ok(name: &'static str, detail: impl Into<String>) -> Guardrail {
    Guardrail {
        name,
        status: "ok",
        detail: detail.into(),
    }
}

fn failed(name: &'static str, detail: impl Into<String>) -> Guardrail {
    Guardrail {
        name,
        status: "failed",
        detail: detail.into(),
    }
}

fn pending(name: &'static str, detail: impl Into<String>) -> Guardrail {
    Guardrail {
        name,
        status: "pending",
        detail: detail.into(),
    }
}

/// What the bake period concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Bake {
    /// Still watching.
    Watch(String),
    /// The new version scores worse than the old baseline by more than the policy allows.
    ImpactNegative { drop: f64, reason: String },
    /// Through the bake period without harm.
    Baked(String),
}

/// Judges a promoted canary's bake period from the new version's turns since promotion.
pub fn bake(canary: &Canary, candidate: &Arm, now: i64) -> Bake {
    let policy = &canary.policy;
    let promoted = canary.promoted_at.unwrap_or(canary.updated_at);
    if let Some(base) = canary.baseline_score.filter(|b| *b > 0.0)
        && candidate.score.n >= policy.bake_min_rated_turns
    {
        let drop = candidate.score.mean / base - 1.0;
        if drop < -policy.bake_max_drop {
            return Bake::ImpactNegative {
                drop,
                reason: format!(
                    "score {:.3} against the baseline's {base:.3} ({:+.1}%) over {} rated turns since promotion",
                    candidate.score.mean,
                    drop * 100.0,
                    candidate.score.n
                ),
            };
        }
    }
    if now - promoted >= seconds(policy.bake_seconds) {
        return Bake::Baked(format!(
            "{} h without a drop worse than {:.0}%",
            policy.bake_seconds / 3_600,
            policy.bake_max_drop * 100.0
        ));
    }
    Bake::Watch(format!("{} rated turns since promotion", candidate.score.n))
}

/// A canary after a decision: its new state, the routes the alias moves to (if it moves) and
/// the kind of deployment that move is.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub canary: Canary,
    pub routes: Option<Vec<AliasRoute>>,
    pub kind: Option<DeploymentKind>,
}

/// Applies a verdict to a running canary.
pub fn transition(canary: &Canary, check: &Check, now: i64) -> Transition {
    let mut next = canary.clone();
    next.updated_at = now;
    next.revision += 1;
    next.hard_limit_breaches = check.hard_limit_breaches;
    next.decided(Decision {
        at: now,
        action: check.verdict.action().to_owned(),
        reason: check.verdict.reason().to_owned(),
        analysis: serde_json::to_value(&check.analysis).unwrap_or_default(),
    });
    let (routes, kind) = match &check.verdict {
        Verdict::Hold(_) => (None, None),
        Verdict::Pause(_) => {
            next.status = CanaryStatus::Paused;
            (None, None)
        }
        Verdict::Advance(_) => {
            next.step += 1;
            next.step_started_at = now;
            (
                Some(next.routes()),
                Some(DeploymentKind::CanaryStepAdvanced),
            )
        }
        Verdict::Promote(_) => {
            promote(&mut next, Some(check.analysis.baseline.score_mean), now);
            (Some(next.routes()), Some(DeploymentKind::CanaryPromoted))
        }
        Verdict::RollBack(_) => {
            next.status = CanaryStatus::RolledBack;
            next.finished_at = Some(now);
            (
                Some(split(canary.baseline, canary.candidate, 0)),
                Some(DeploymentKind::CanaryRolledBack),
            )
        }
    };
    Transition {
        canary: next,
        routes,
        kind,
    }
}

/// Marks a canary promoted: the candidate takes all traffic and the bake period starts.
pub fn promote(canary: &mut Canary, baseline_score: Option<f64>, now: i64) {
    canary.status = CanaryStatus::Baking;
    canary.step = canary.policy.steps.len();
    canary.promoted_at = Some(now);
    canary.baseline_score = baseline_score.filter(|s| *s > 0.0);
}
