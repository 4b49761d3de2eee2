//! A seeded simulation of the canary decision rule: simulated sessions (each one turn), routed by
//! the canary's split, failing and rated per arm, checked every five minutes of an injected
//! clock, 200 runs per scenario. Run with `--nocapture` to see the measured rates.

use aop_core::agent::AgentId;
use aop_core::deployment::analysis::{Arm, Verdict, decide, transition};
use aop_core::deployment::{Canary, CanaryId, CanaryPolicy, CanaryStatus, TurnSample};
use aop_core::principal::Principal;

const RUNS: u64 = 200;
const CHECK_MS: i64 = 5 * 60 * 1000;
const SESSIONS_PER_CHECK: u64 = 16; // 192 new sessions an hour
const RATED: f64 = 0.5;

/// SplitMix64: a small, fast, seedable generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A rating on a five-point scale, normalised to 0..1, with mean `mean`: Binomial(4, mean)/4.
    fn rating(&mut self, mean: f64) -> f64 {
        (0..4).filter(|_| self.chance(mean)).count() as f64 / 4.0
    }
}

#[derive(Clone, Copy)]
struct ArmTruth {
    score: f64,
    error_rate: f64,
    latency_ms: f64,
}

const BASELINE: ArmTruth = ArmTruth {
    score: 0.70,
    error_rate: 0.01,
    latency_ms: 800.0,
};

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Promoted,
    RolledBack { by_guardrail: bool },
    Paused,
}

struct Run {
    outcome: Outcome,
    /// Simulated hours from the start to the decision.
    hours: f64,
    /// Whether P(B > A) alone (with the minimum turns and the loss threshold) would have
    /// promoted at some check, without the always-valid gate.
    naive_promotion: bool,
}

fn canary(policy: &CanaryPolicy) -> Canary {
    Canary {
        history: Vec::new(),
        canary_id: CanaryId::generate(),
        agent_id: AgentId::generate(),
        alias: "prod".into(),
        baseline: 1,
        candidate: 2,
        policy: policy.clone(),
        status: CanaryStatus::Running,
        step: 0,
        started_at: 0,
        step_started_at: 0,
        updated_at: 0,
        hard_limit_breaches: 0,
        last_decision: None,
        promoted_at: None,
        baseline_score: None,
        finished_at: None,
        started_by: Principal::anonymous(),
        revision: 0,
    }
}

fn simulate(seed: u64, candidate: ArmTruth) -> Run {
    let policy = CanaryPolicy::default();
    let mut rng = Rng(seed);
    let mut canary = canary(&policy);
    let (mut a, mut b) = (
        Arm {
            version: 1,
            ..Arm::default()
        },
        Arm {
            version: 2,
            ..Arm::default()
        },
    );
    let mut step_sessions = [0u64; 2];
    let mut naive_promotion = false;
    let mut now = 0;
    loop {
        now += CHECK_MS;
        let weight = f64::from(canary.candidate_weight()) / 100.0;
        for _ in 0..SESSIONS_PER_CHECK {
            let on_candidate = rng.chance(weight);
            let truth = if on_candidate { candidate } else { BASELINE };
            let failed = rng.chance(truth.error_rate);
            let ratings = if !failed && rng.chance(RATED) {
                vec![("helpfulness".to_owned(), rng.rating(truth.score))]
            } else {
                Vec::new()
            };
            let turn = TurnSample {
                version: if on_candidate { 2 } else { 1 },
                failed,
                latency_ms: (truth.latency_ms * (0.5 + rng.uniform())) as u64,
                cost_usd: Some(0.001),
                ratings,
            };
            let (arm, count) = if on_candidate {
                (&mut b, &mut step_sessions[1])
            } else {
                (&mut a, &mut step_sessions[0])
            };
            arm.push(&turn, &policy);
            *count += 1;
        }
        let check = decide(&canary, &a, &b, step_sessions, now);
        let enough = a.score.n >= policy.min_rated_turns && b.score.n >= policy.min_rated_turns;
        naive_promotion |= enough
            && check.analysis.prob_better >= policy.promote_probability
            && check.analysis.relative_loss <= policy.max_relative_loss;
        let next = transition(&canary, &check, now);
        match &check.verdict {
            Verdict::Promote(_) => {
                return Run {
                    outcome: Outcome::Promoted,
                    hours: now as f64 / 3_600_000.0,
                    naive_promotion,
                };
            }
            Verdict::RollBack(reason) => {
                if std::env::var_os("SIM_DEBUG").is_some() {
                    eprintln!("{reason}");
                }
                return Run {
                    outcome: Outcome::RolledBack {
                        by_guardrail: reason.starts_with("guardrail"),
                    },
                    hours: now as f64 / 3_600_000.0,
                    naive_promotion,
                };
            }
            Verdict::Pause(_) => {
                return Run {
                    outcome: Outcome::Paused,
                    hours: now as f64 / 3_600_000.0,
                    naive_promotion,
                };
            }
            Verdict::Advance(_) => step_sessions = [0, 0],
            Verdict::Hold(_) => {}
        }
        canary = next.canary;
    }
}

struct Rates {
    promoted: f64,
    rolled_back: f64,
    by_guardrail: f64,
    paused: f64,
    naive: f64,
}

fn scenario(name: &str, seed: u64, candidate: ArmTruth) -> Rates {
    let runs: Vec<Run> = (0..RUNS)
        .map(|i| simulate(seed + i * 7919, candidate))
        .collect();
    let share =
        |f: &dyn Fn(&Run) -> bool| runs.iter().filter(|r| f(r)).count() as f64 / RUNS as f64;
    let rates = Rates {
        promoted: share(&|r| r.outcome == Outcome::Promoted),
        rolled_back: share(&|r| matches!(r.outcome, Outcome::RolledBack { .. })),
        by_guardrail: share(&|r| r.outcome == Outcome::RolledBack { by_guardrail: true }),
        paused: share(&|r| r.outcome == Outcome::Paused),
        naive: share(&|r| r.naive_promotion),
    };
    let mut hours: Vec<f64> = runs.iter().map(|r| r.hours).collect();
    hours.sort_by(f64::total_cmp);
    println!(
        "{name}: promoted {:.1}%, rolled back {:.1}% ({:.1}% by a guardrail), paused {:.1}%; decided after a median {:.1} h; P(B>A) alone would have promoted {:.1}% ({RUNS} runs)",
        rates.promoted * 100.0,
        rates.rolled_back * 100.0,
        rates.by_guardrail * 100.0,
        rates.paused * 100.0,
        hours[hours.len() / 2],
        rates.naive * 100.0
    );
    rates
}

#[test]
fn a_better_candidate_is_promoted() {
    let r = scenario(
        "candidate +5 points",
        1,
        ArmTruth {
            score: 0.75,
            ..BASELINE
        },
    );
    assert!(r.promoted >= 0.90, "promoted {}", r.promoted);
}

#[test]
fn a_worse_candidate_is_rolled_back() {
    let r = scenario(
        "candidate -5 points",
        2,
        ArmTruth {
            score: 0.65,
            ..BASELINE
        },
    );
    assert!(r.rolled_back >= 0.95, "rolled back {}", r.rolled_back);
}

#[test]
fn an_equal_candidate_is_rarely_promoted() {
    let r = scenario("candidate equal", 3, BASELINE);
    assert!(r.promoted <= 0.05, "promoted {}", r.promoted);
}

#[test]
fn a_doubled_error_rate_is_rolled_back_by_a_guardrail() {
    let r = scenario(
        "candidate error rate doubled (1% -> 2%)",
        4,
        ArmTruth {
            error_rate: 0.02,
            ..BASELINE
        },
    );
    assert!(r.rolled_back >= 0.95, "rolled back {}", r.rolled_back);
    assert!(r.by_guardrail >= 0.90, "by a guardrail {}", r.by_guardrail);
}
