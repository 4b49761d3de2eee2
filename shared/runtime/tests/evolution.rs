//! Evolution runs end to end inside the platform, against the OpenAI-compatible test server
//! through the real async-openai client: the engine's exact behaviour (acceptance, budgets,
//! caching, pause and resume, redelivery, failures, bad input, replayed feedback, rollout) on
//! the embedded store. A scripted "model" makes outcomes exact: a task answer is right only when
//! the instructions ask for the number alone, and the reflection model adds that rule.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use aop_core::evolution::{EvolutionId, EvolutionMode, EvolutionStatus, Operator};
use aop_core::principal::Principal;
use aop_core::proposal::{ProposalStatus, ReviewDecision};
use aop_core::services::evolution::{
    AddEvalCases, InitializeEvolution, NewEvalCase, SelectCandidate, Step,
};
use aop_core::services::proposals::ReviewProposal;
use aop_core::{AgentId, CreateAgent, EventType, ServiceError};
use aop_runtime::{Config, Overrides, Platform};
use openai_test_server::{Reply, TestLlm};
use serde_json::{Value, json};

const KEY: &str = "sk-evolution-tests-secret";
const SEED_INSTRUCTIONS: &str = "You are a calculator. Add the two numbers in the question.";
const RULE: &str = "Answer with the number only.";

struct Setup {
    platform: Platform,
    llm: TestLlm,
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

fn env_of(
    llm: &TestLlm,
    dir: &tempfile::TempDir,
    extra: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("OPENAI_BASE_URL", llm.base_url()),
        ("OPENAI_API_KEY", KEY.to_owned()),
        ("AOP_DATA_DIR", dir.path().display().to_string()),
        ("AOP_EVOLUTION_CALL_TIMEOUT_SECONDS", "5".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

async fn setup(extra: &[(&str, &str)]) -> Setup {
    let llm = TestLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = env_of(&llm, &dir, extra);
    let config = Config::from_sources(None, &env, &Overrides::default()).unwrap();
    Setup {
        platform: Platform::build(&config).unwrap(),
        llm,
        dir,
        env,
    }
}

impl Setup {
    /// The platform again on the same store: what a restarted process sees.
    fn restart(&self) -> Platform {
        let config = Config::from_sources(None, &self.env, &Overrides::default()).unwrap();
        Platform::build(&config).unwrap()
    }
}

/// The text of message `role` of a recorded request.
fn message(body: &Value, role: &str) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == role))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn is_reflection(body: &Value) -> bool {
    message(body, "system").starts_with("You improve the instructions")
}

fn is_judge(body: &Value) -> bool {
    message(body, "system").starts_with("You grade an AI assistant's answer")
}

fn is_task(body: &Value) -> bool {
    !is_reflection(body) && !is_judge(body)
}

/// `What is A plus B?` → A + B.
fn sum_asked(question: &str) -> Option<i64> {
    let words: Vec<&str> = question.trim_end_matches('?').split_whitespace().collect();
    let a = words.get(2)?.parse::<i64>().ok()?;
    let b = words.get(4)?.parse::<i64>().ok()?;
    Some(a + b)
}

/// The current text a reflection request shows, between `<current>` tags.
fn current_text(text: &str) -> String {
    let start = text.find("<current>").map_or(0, |i| i + "<current>".len());
    let rest = &text[start..];
    rest.split("</current>")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A model that answers right only when told to give the number alone; its reflection adds
/// that rule when `helpful` is set, and an irrelevant sentence otherwise.
fn calculator(helpful: bool) -> impl Fn(&Value) -> Option<Reply> + Send + Sync + 'static {
    let attempts = AtomicUsize::new(0);
    move |body: &Value| {
        if is_reflection(body) {
            let current = current_text(&message(body, "user"));
            let attempt = attempts.fetch_add(1, Ordering::SeqCst);
            let added = if helpful && !current.contains(RULE) {
                RULE.to_owned()
            } else {
                format!("Be polite (try {attempt}).")
            };
            return Some(Reply::text(&format!(
                "The feedback asks for the bare number.\n```\n{current}\n{added}\n```"
            )));
        }
        if is_judge(body) {
            let user = message(body, "user");
            let answer = user.rsplit("Answer to grade:\n").next().unwrap_or_default();
            let score = if answer.trim().parse::<i64>().is_ok() {
                1.0
            } else {
                0.25
            };
            return Some(Reply::text(
                &json!({"score": score, "feedback": "the answer should be the number alone"})
                    .to_string(),
            ));
        }
        let system = message(body, "system");
        let sum = sum_asked(&message(body, "user"))?;
        let answer = if system.contains(RULE) {
            sum.to_string()
        } else {
            format!("The answer is {sum}.")
        };
        Some(Reply::Text {
            content: answer,
            prompt_tokens: 50,
            completion_tokens: 5,
        })
    }
}

async fn calculator_agent(s: &Setup) -> AgentId {
    s.platform
        .mcp
        .agents
        .create(CreateAgent {
            name: "calculator".into(),
            instructions: SEED_INSTRUCTIONS.into(),
            model: Some("gpt-4o-mini".into()),
            ..CreateAgent::default()
        })
        .await
        .unwrap()
        .agent
        .agent_id
}

fn case(a: i64, b: i64) -> NewEvalCase {
    serde_json::from_value(json!({
        "input": format!("What is {a} plus {b}?"),
        "checks": [{"kind": "equals", "value": (a + b).to_string()}],
        "tags": [if a % 2 == 0 { "even" } else { "odd" }],
    }))
    .unwrap()
}

async fn add_cases(s: &Setup, agent_id: &AgentId, n: i64) {
    s.platform
        .mcp
        .evolutions
        .add_eval_cases(AddEvalCases {
            agent_id: agent_id.clone(),
            cases: (1..=n).map(|i| case(i, 10 * i)).collect(),
        })
        .await
        .unwrap();
}

fn start(agent_id: &AgentId, max_metric_calls: u32) -> InitializeEvolution {
    serde_json::from_value(json!({
        "agent_id": agent_id,
        "valset_size": 4,
        "minibatch_size": 2,
        "budget": {"max_metric_calls": max_metric_calls},
    }))
    .unwrap()
}

fn alice() -> Principal {
    Principal::named("alice")
}

/// Steps a run until it ends, as the worker would for each request; returns every step.
async fn drive(platform: &Platform, id: &EvolutionId) -> Vec<Step> {
    let svc = &platform.mcp.evolutions;
    let mut steps = Vec::new();
    for _ in 0..200 {
        let run = svc.run(id).await.unwrap();
        if run.status != EvolutionStatus::Running {
            return steps;
        }
        steps.push(svc.step(id, run.iteration).await.unwrap());
    }
    panic!("the run did not end in 200 steps: {steps:?}");
}

fn task_requests(llm: &TestLlm) -> Vec<Value> {
    llm.requests()
        .into_iter()
        .map(|r| r.body)
        .filter(is_task)
        .collect()
}

async fn event_types(platform: &Platform) -> Vec<EventType> {
    platform
        .mcp
        .stores
        .outbox
        .pending(10_000)
        .await
        .unwrap()
        .iter()
        .map(aop_core::DomainEvent::event_type)
        .collect()
}

#[tokio::test]
async fn an_evolution_learns_from_its_failures_and_proposes_its_winner() {
    let s = setup(&[]).await;
    s.llm.respond_with(calculator(true));
    let agent_id = calculator_agent(&s).await;
    add_cases(&s, &agent_id, 8).await;
    let svc = &s.platform.mcp.evolutions;
    let view = svc
        .initialize(start(&agent_id, 60), &alice())
        .await
        .unwrap();
    assert_eq!(view.status, EvolutionStatus::Running);
    assert_eq!((view.valset_size, view.trainset_size), (4, 4));
    assert_eq!(view.seed_version, 1);

    drive(&s.platform, &view.evolution_id).await;
    let done = svc.status(&view.evolution_id).await.unwrap();
    assert_eq!(done.status, EvolutionStatus::Completed, "{done:?}");
    assert_eq!(done.seed_score, Some(0.0));
    assert_eq!(done.best_score, Some(1.0));
    assert!(
        done.stop_reason
            .as_deref()
            .unwrap()
            .contains("reached the target"),
        "{done:?}"
    );
    // Every metric call is one task request the model answered; the budget holds.
    let tasks = task_requests(&s.llm);
    assert_eq!(done.spend.metric_calls as usize, tasks.len());
    assert!(done.spend.metric_calls <= 60);
    assert!(done.spend.cost_usd > 0.0, "gpt-4o-mini has a list price");
    assert!(
        done.spend.llm_calls > done.spend.metric_calls,
        "the reflection is a call too"
    );

    // The winner is an immutable version with its lineage; no alias moved.
    let winner = done.winner.clone().expect("a winner");
    assert_eq!(winner.version, 2);
    assert!((winner.improvement - 1.0).abs() < 1e-9);
    let agents = &s.platform.mcp.agents;
    let v2 = agents.get(&agent_id, Some(2)).await.unwrap();
    assert_eq!(
        v2.version.created_by,
        format!("evolution:{}", view.evolution_id)
    );
    assert_eq!(v2.version.generation, 1);
    assert!(v2.version.instructions.ends_with(RULE));
    let origin = v2.version.origin.clone().unwrap();
    assert_eq!(origin.operator, "reflection");
    assert_eq!(origin.evolution_id, view.evolution_id.to_string());
    assert_eq!(v2.version.parents[0].version, 1);
    assert_eq!(
        v2.agent.alias("prod").unwrap().routes[0].version,
        1,
        "an evolution never moves an alias itself"
    );

    // The candidates: the seed, then the child that was accepted on its minibatch.
    let candidates = svc.candidates(&view.evolution_id).await.unwrap();
    assert_eq!(candidates.len(), 2);
    assert_eq!(candidates[0].operator, Operator::Seed);
    let child = &candidates[1];
    assert_eq!(child.parents, [candidates[0].candidate_id.clone()]);
    let mb = child.minibatch.clone().unwrap();
    assert_eq!((mb.parent_total(), mb.child_total()), (0.0, 2.0));
    assert_eq!(child.val_scores, [1.0; 4]);
    assert_eq!(child.rationale, "The feedback asks for the bare number.");

    // Lineage and history read back, the lineage also as Mermaid.
    let lineage = svc.lineage(&view.evolution_id).await.unwrap();
    assert_eq!(lineage.links.len(), 1);
    let mermaid = lineage.mermaid();
    assert!(mermaid.starts_with("flowchart TD"), "{mermaid}");
    assert!(mermaid.contains("c0 --> c1"), "{mermaid}");
    assert!(mermaid.contains("v2"), "{mermaid}");
    let history = svc.history(&view.evolution_id).await.unwrap();
    let outcomes: Vec<&str> = history.points.iter().map(|p| p.outcome.as_str()).collect();
    assert_eq!(outcomes, ["seeded", "accepted"]);

    // Events tell the story, in order, with the run's writes.
    let types = event_types(&s.platform).await;
    let evo: Vec<&str> = types
        .iter()
        .map(|t| t.as_str())
        .filter(|t| t.starts_with("evolution."))
        .collect();
    assert_eq!(
        evo,
        [
            "evolution.started",
            "evolution.generation.requested",
            "evolution.generation.completed",
            "evolution.candidate.accepted",
            "evolution.generation.requested",
            "evolution.generation.completed",
            "evolution.candidate.accepted",
            "evolution.candidate.selected",
            "evolution.completed",
        ]
    );

    // Review mode: a proposal for version 2, which a reviewer's approval puts on a canary.
    let proposal_id = winner.proposal_id.clone().expect("a proposal");
    let proposal = s.platform.mcp.proposals.get(&proposal_id).await.unwrap();
    assert_eq!(proposal.status, ProposalStatus::Pending);
    assert_eq!(proposal.version, Some(2));
    assert_eq!(proposal.base_version, 1);
    assert!(proposal.rationale.contains("validation mean 1.000"));
    let reviewed = s
        .platform
        .mcp
        .proposals
        .review(
            ReviewProposal {
                proposal_id,
                decision: ReviewDecision::Approve,
                comment: None,
            },
            &alice(),
        )
        .await
        .unwrap();
    assert_eq!(reviewed.proposal.status, ProposalStatus::Applied);
    assert_eq!(
        reviewed.version.unwrap().version.version,
        2,
        "no new version is made"
    );
    let canary = reviewed.rollout.unwrap().canary.expect("a canary");
    assert_eq!(canary.candidate, 2);
    assert_eq!(
        agents
            .get(&agent_id, None)
            .await
            .unwrap()
            .agent
            .latest_version,
        2
    );
}

#[tokio::test]
async fn a_run_that_finds_nothing_better_keeps_nothing_and_stays_inside_its_budget() {
    let s = setup(&[]).await;
    s.llm.respond_with(calculator(false));
    let agent_id = calculator_agent(&s).await;
    add_cases(&s, &agent_id, 8).await;
    let svc = &s.platform.mcp.evolutions;

    // 4 + 3 × (2 + 4) = 22 is the least that pays for one accepted iteration.
    let err = svc
        .initialize(start(&agent_id, 21), &alice())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("budget.max_metric_calls"), "{text}");
    assert!(text.contains("the minimum is 22"), "{text}");

    let view = svc
        .initialize(start(&agent_id, 22), &alice())
        .await
        .unwrap();
    drive(&s.platform, &view.evolution_id).await;
    let done = svc.status(&view.evolution_id).await.unwrap();
    assert_eq!(done.status, EvolutionStatus::Completed);
    assert!(done.spend.metric_calls <= 22, "{:?}", done.spend);
    assert_eq!(
        done.spend.metric_calls as usize,
        task_requests(&s.llm).len()
    );
    let reason = done.stop_reason.unwrap();
    assert!(reason.contains("budget"), "{reason}");
    assert!(
        reason.contains("no candidate scored better than the seed"),
        "{reason}"
    );
    assert!(done.winner.is_none());
    assert_eq!(
        s.platform
            .mcp
            .agents
            .get(&agent_id, None)
            .await
            .unwrap()
            .agent
            .latest_version,
        1,
        "no version is made for a run without a winner"
    );
    let candidates = svc.candidates(&view.evolution_id).await.unwrap();
    let rejected: Vec<_> = candidates.iter().filter(|c| !c.accepted).collect();
    assert!(!rejected.is_empty());
    assert!(
        rejected
            .iter()
            .all(|c| c.val_scores.is_empty() && c.minibatch.is_some())
    );

    // Any candidate can still be proposed by hand.
    let selected = svc
        .select(
            SelectCandidate {
                evolution_id: view.evolution_id.clone(),
                candidate_id: rejected[0].candidate_id.clone(),
                rollout: None,
            },
            &alice(),
        )
        .await
        .unwrap();
    assert_eq!(selected.version, 2);
    assert_eq!(selected.proposal.version, Some(2));
    let again = svc
        .select(
            SelectCandidate {
                evolution_id: view.evolution_id.clone(),
                candidate_id: rejected[0].candidate_id.clone(),
                rollout: None,
            },
            &alice(),
        )
        .await
        .unwrap();
    assert_eq!(
        (again.version, again.proposal.proposal_id),
        (2, selected.proposal.proposal_id),
        "selecting twice makes nothing twice"
    );
    let seed = svc
        .select(
            SelectCandidate {
                evolution_id: view.evolution_id.clone(),
                candidate_id: candidates[0].candidate_id.clone(),
                rollout: None,
            },
            &alice(),
        )
        .await
        .unwrap_err();
    assert!(seed.to_string().contains("candidate_id"), "{seed}");
}

#[tokio::test]
async fn a_paused_or_crashed_step_resumes_without_paying_twice_and_a_redelivery_does_nothing() {
    // One case at a time, and a step slice of one second: the first answer takes longer, so
    // the step pauses after paying for one case, as a crash after that case would leave it.
    let s = setup(&[
        ("AOP_EVOLUTION_CONCURRENCY", "1"),
        ("AOP_EVOLUTION_STEP_SECONDS", "1"),
    ])
    .await;
    s.llm.respond_with(calculator(true));
    s.llm.push([Reply::Delay { millis: 1_200 }]);
    let agent_id = calculator_agent(&s).await;
    add_cases(&s, &agent_id, 8).await;
    let svc = &s.platform.mcp.evolutions;
    let view = svc
        .initialize(start(&agent_id, 60), &alice())
        .await
        .unwrap();
    let id = view.evolution_id.clone();

    assert_eq!(svc.step(&id, 0).await.unwrap(), Step::Continued);
    let paused = svc.run(&id).await.unwrap();
    assert_eq!(paused.iteration, 0, "the iteration is not done");
    assert_eq!(task_requests(&s.llm).len(), 1, "one case was paid for");

    // A process that starts again picks the run up where it stands.
    let restarted = s.restart();
    drive(&restarted, &id).await;
    let done = restarted.mcp.evolutions.status(&id).await.unwrap();
    assert_eq!(done.status, EvolutionStatus::Completed, "{done:?}");

    // No (candidate, case) pair was ever asked twice, and the spend counts each once.
    let tasks = task_requests(&s.llm);
    let mut pairs: Vec<(String, String)> = tasks
        .iter()
        .map(|b| (message(b, "system"), message(b, "user")))
        .collect();
    let asked = pairs.len();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), asked, "a paid result was paid again");
    assert_eq!(done.spend.metric_calls as usize, asked);

    // A redelivered request for an iteration already done changes nothing.
    let events_before = event_types(&restarted).await.len();
    for iteration in 0..done.iteration {
        assert_eq!(
            restarted.mcp.evolutions.step(&id, iteration).await.unwrap(),
            Step::Duplicate
        );
    }
    assert_eq!(task_requests(&s.llm).len(), asked);
    assert_eq!(event_types(&restarted).await.len(), events_before);
    drop(s.dir);
}

#[tokio::test]
async fn a_model_that_keeps_failing_fails_the_run_after_its_retries() {
    let s = setup(&[
        ("AOP_EVOLUTION_MAX_RETRIES", "2"),
        ("AOP_EVOLUTION_CALL_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    s.llm
        .respond_with(|_| Some(Reply::error(503, "The server is overloaded")));
    let agent_id = calculator_agent(&s).await;
    add_cases(&s, &agent_id, 8).await;
    let svc = &s.platform.mcp.evolutions;
    let view = svc
        .initialize(start(&agent_id, 60), &alice())
        .await
        .unwrap();
    let id = view.evolution_id;
    assert_eq!(svc.step(&id, 0).await.unwrap(), Step::Continued);
    let retrying = svc.status(&id).await.unwrap();
    assert_eq!(retrying.status, EvolutionStatus::Running);
    assert!(retrying.error.unwrap().contains("unavailable"));
    assert_eq!(
        svc.step(&id, 0).await.unwrap(),
        Step::Finished(EvolutionStatus::Failed)
    );
    let failed = svc.status(&id).await.unwrap();
    let error = failed.error.unwrap();
    assert!(error.contains("failed 2 times in a row"), "{error}");
    let types = event_types(&s.platform).await;
    assert_eq!(types.last(), Some(&EventType::EvolutionFailed));
}

#[tokio::test]
async fn a_refused_key_fails_the_run_at_once_without_showing_the_key() {
    let s = setup(&[]).await;
    s.llm.respond_with(|_| {
        Some(Reply::error(
            401,
            "Incorrect API key provided: sk-evo*****cret.",
        ))
    });
    let agent_id = calculator_agent(&s).await;
    add_cases(&s, &agent_id, 8).await;
    let svc = &s.platform.mcp.evolutions;
    let view = svc
        .initialize(start(&agent_id, 60), &alice())
        .await
        .unwrap();
    let steps = drive(&s.platform, &view.evolution_id).await;
    assert_eq!(steps, [Step::Finished(EvolutionStatus::Failed)]);
    let failed = svc.status(&view.evolution_id).await.unwrap();
    let error = failed.error.unwrap();
    assert!(error.contains("401"), "{error}");
    assert!(!error.contains(KEY), "{error}");
    assert!(
        !error.contains("sk-evo"),
        "the masked key is not shown either: {error}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    let s = setup(&[]).await;
    s.llm.respond_with(calculator(true));
    let agent_id = calculator_agent(&s).await;
    let svc = &s.platform.mcp.evolutions;
    let fields = |e: ServiceError| match e {
        ServiceError::Invalid(f) => f
            .into_iter()
            .map(|f| format!("{}: {}", f.field, f.reason))
            .collect::<Vec<_>>(),
        other => panic!("expected invalid input, got {other:?}"),
    };

    // Checks that cannot work are refused when added, each at its place.
    let bad: Vec<NewEvalCase> = serde_json::from_value(json!([
        {"input": "a", "checks": [{"kind": "regex", "pattern": "(unclosed"}]},
        {"input": "b", "checks": [{"kind": "contains", "value": "x"}, {"kind": "json_schema", "schema": {"type": 12}}]},
        {"input": "", "checks": []},
    ]))
    .unwrap();
    let err = svc
        .add_eval_cases(AddEvalCases {
            agent_id: agent_id.clone(),
            cases: bad,
        })
        .await
        .unwrap_err();
    let problems = fields(err);
    assert!(
        problems[0].starts_with("cases[0].checks[0]: pattern does not compile"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("cases[1].checks[1]: schema is not a valid JSON Schema"),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("cases[2].input")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("cases[2].checks")),
        "{problems:?}"
    );
    // A check of an unknown kind does not even parse, and says which kinds there are.
    let unknown = serde_json::from_value::<AddEvalCases>(json!({
        "agent_id": agent_id,
        "cases": [{"input": "a", "checks": [{"kind": "similar", "value": "x"}]}],
    }))
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("unknown variant `similar`"), "{unknown}");
    assert!(unknown.contains("json_schema"), "{unknown}");

    // Unknown agent, unknown alias, too few cases.
    let ghost: AgentId = AgentId::parse("agent_id", "agt_ghost").unwrap();
    assert!(matches!(
        svc.initialize(start(&ghost, 60), &alice()).await,
        Err(ServiceError::NotFound { .. })
    ));
    let mut on_alias = start(&agent_id, 60);
    on_alias.alias = Some("staging".into());
    let problems = fields(svc.initialize(on_alias, &alice()).await.unwrap_err());
    assert_eq!(
        problems,
        [format!(
            "alias: agent '{agent_id}' has no alias 'staging' (it has: prod)"
        )]
    );
    let mut impatient = start(&agent_id, 60);
    impatient.patience = Some(0);
    impatient.minibatch_size = Some(50);
    let problems = fields(svc.initialize(impatient, &alice()).await.unwrap_err());
    assert_eq!(
        problems,
        [
            "minibatch_size: must be 1 to 20 (got 50)",
            "patience: must be 1 to 1000 (got 0)"
        ]
    );
    add_cases(&s, &agent_id, 3).await;
    let problems = fields(
        svc.initialize(start(&agent_id, 60), &alice())
            .await
            .unwrap_err(),
    );
    assert!(
        problems[0].starts_with("valset_size: agent"),
        "{problems:?}"
    );
    assert!(problems[0].contains("has 3 usable cases"), "{problems:?}");
    assert!(
        problems[0].contains("at least valset_size + 1 = 5"),
        "{problems:?}"
    );

    // One running run per agent; a finished run cannot be cancelled.
    add_cases(&s, &agent_id, 5).await;
    let first = svc
        .initialize(start(&agent_id, 60), &alice())
        .await
        .unwrap();
    let second = svc
        .initialize(start(&agent_id, 60), &alice())
        .await
        .unwrap_err();
    assert!(matches!(second, ServiceError::Conflict(_)));
    assert!(
        second.to_string().contains(first.evolution_id.as_str()),
        "{second}"
    );
    let cancelled = svc.cancel(&first.evolution_id, &alice()).await.unwrap();
    assert_eq!(cancelled.status, EvolutionStatus::Cancelled);
    assert_eq!(cancelled.stop_reason.as_deref(), Some("cancelled by alice"));
    assert_eq!(
        svc.step(&first.evolution_id, 0).await.unwrap(),
        Step::Duplicate,
        "a cancelled run takes no more steps"
    );
    let again = svc.cancel(&first.evolution_id, &alice()).await.unwrap_err();
    assert!(again.to_string().contains("cancelled already"), "{again}");
    svc.initialize(start(&agent_id, 60), &alice())
        .await
        .expect("a new run once the other ended");
}

#[tokio::test]
async fn rated_turns_are_replayed_with_their_feedback_as_the_judges_rubric() {
    let s = setup(&[]).await;
    let agent_id = calculator_agent(&s).await;
    // Three recorded turns answered in prose, rated low with a comment saying why.
    for (i, (a, b)) in [(1, 2), (3, 4), (5, 6)].into_iter().enumerate() {
        s.llm
            .push([Reply::text(&format!("The answer is {}.", a + b))]);
        let turn = s
            .platform
            .mcp
            .conversations
            .run_agent(
                aop_core::services::conversation::RunAgent {
                    caller: None,
                    agent_id: agent_id.clone(),
                    alias: None,
                    input: format!("What is {a} plus {b}?"),
                    user_id: Some(format!("user-{i}")),
                },
                None,
            )
            .await
            .unwrap();
        s.platform
            .mcp
            .feedback
            .submit(
                serde_json::from_value(json!({
                    "agent_id": agent_id,
                    "interaction_id": turn.interaction_id,
                    "ratings": {"accuracy": 2},
                    "comments": "I only wanted the number",
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    s.llm.respond_with(calculator(true));
    let svc = &s.platform.mcp.evolutions;
    let mut input = start(&agent_id, 60);
    input.valset_size = Some(2);
    input.objective = Some(
        serde_json::from_value(json!([{"metric": "accuracy", "weight": 1.0, "goal": "maximize"}]))
            .unwrap(),
    );
    let view = svc.initialize(input, &alice()).await.unwrap();
    assert_eq!((view.replayed_turns, view.eval_cases), (3, 0));
    let run = svc.run(&view.evolution_id).await.unwrap();
    // A rating of 2 on 1..5 is 0.25 normalised: the prior score orders training.
    assert!(run.cases.iter().all(|c| c.prior_score == Some(0.25)));

    svc.step(&view.evolution_id, 0).await.unwrap();
    let judged: Vec<String> = s
        .llm
        .requests()
        .iter()
        .filter(|r| is_judge(&r.body))
        .map(|r| message(&r.body, "user"))
        .collect();
    assert_eq!(judged.len(), 2, "one judge call per validation case");
    for rubric in &judged {
        assert!(rubric.contains("rated 0.25"), "{rubric}");
        assert!(rubric.contains("I only wanted the number"), "{rubric}");
        assert!(
            rubric.contains("The earlier answer was:\nThe answer is"),
            "{rubric}"
        );
    }
    drive(&s.platform, &view.evolution_id).await;
    let done = svc.status(&view.evolution_id).await.unwrap();
    assert_eq!(done.seed_score, Some(0.25));
    assert_eq!(done.best_score, Some(1.0));
}

#[tokio::test]
async fn in_auto_mode_the_winner_goes_to_a_canary() {
    let s = setup(&[]).await;
    s.llm.respond_with(calculator(true));
    let agent_id = calculator_agent(&s).await;
    add_cases(&s, &agent_id, 8).await;
    let svc = &s.platform.mcp.evolutions;
    let mut input = start(&agent_id, 60);
    input.mode = Some(EvolutionMode::Auto);
    let view = svc.initialize(input, &alice()).await.unwrap();
    drive(&s.platform, &view.evolution_id).await;
    let winner = svc
        .status(&view.evolution_id)
        .await
        .unwrap()
        .winner
        .unwrap();
    assert!(winner.proposal_id.is_none());
    let canary = s
        .platform
        .mcp
        .deployments
        .canary(&winner.canary_id.expect("a canary"))
        .await
        .unwrap();
    assert_eq!((canary.baseline, canary.candidate), (1, 2));
    assert_eq!(canary.alias, "prod");
}

#[tokio::test]
async fn the_in_process_worker_runs_a_started_evolution_to_its_end() {
    let s = setup(&[]).await;
    s.llm.respond_with(calculator(true));
    let agent_id = calculator_agent(&s).await;
    add_cases(&s, &agent_id, 8).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(s.platform.in_process_relay().run(shutdown.clone()));
    let svc = &s.platform.mcp.evolutions;
    let view = svc
        .initialize(start(&agent_id, 60), &alice())
        .await
        .unwrap();
    let mut status = view.status;
    for _ in 0..200 {
        status = svc.status(&view.evolution_id).await.unwrap().status;
        if status != EvolutionStatus::Running {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    relay.await.unwrap();
    assert_eq!(status, EvolutionStatus::Completed);
}

#[tokio::test]
async fn the_schedule_starts_runs_on_low_ratings_and_asks_again_for_stalled_ones() {
    let s = setup(&[
        ("AOP_EVOLUTION_AUTO_TRIGGER_LOW_RATED", "3"),
        ("AOP_EVOLUTION_VALSET_SIZE", "2"),
        ("AOP_EVOLUTION_MINIBATCH_SIZE", "1"),
        ("AOP_EVOLUTION_STALL_SECONDS", "1"),
    ])
    .await;
    let agent_id = calculator_agent(&s).await;
    add_cases(&s, &agent_id, 4).await;
    let rate = |score: f64| {
        let (s, agent_id) = (&s, agent_id.clone());
        async move {
            s.llm.push([Reply::text("The answer is 3.")]);
            let turn = s
                .platform
                .mcp
                .conversations
                .run_agent(
                    aop_core::services::conversation::RunAgent {
                        caller: None,
                        agent_id: agent_id.clone(),
                        alias: None,
                        input: "What is 1 plus 2?".into(),
                        user_id: None,
                    },
                    None,
                )
                .await
                .unwrap();
            s.platform
                .mcp
                .feedback
                .submit(
                    serde_json::from_value(json!({
                        "agent_id": agent_id,
                        "interaction_id": turn.interaction_id,
                        "ratings": {"accuracy": score},
                        "scale": "0-1",
                    }))
                    .unwrap(),
                )
                .await
                .unwrap();
        }
    };
    rate(0.9).await;
    rate(0.1).await;
    rate(0.2).await;
    let schedule = &s.platform.schedule;
    assert_eq!(
        schedule.run_once().await.unwrap().evolutions_started,
        0,
        "two low-rated turns are not enough"
    );
    rate(0.0).await;
    let pass = schedule.run_once().await.unwrap();
    assert_eq!(pass.evolutions_started, 1);
    let runs = s
        .platform
        .mcp
        .evolutions
        .list(aop_core::services::evolution::ListEvolutions {
            agent_id: Some(agent_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].started_by.as_str(), "system:auto-evolution");
    assert_eq!(runs[0].replayed_turns, 4);

    // Nothing took the run's request (no worker here): once it stalls, it is asked for again.
    let requests = |types: &[EventType]| {
        types
            .iter()
            .filter(|t| **t == EventType::EvolutionGenerationRequested)
            .count()
    };
    let before = requests(&event_types(&s.platform).await);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let pass = schedule.run_once().await.unwrap();
    assert_eq!((pass.evolutions_resumed, pass.evolutions_started), (1, 0));
    assert_eq!(requests(&event_types(&s.platform).await), before + 1);

    // Once that run ends, only new low-rated turns start another.
    s.platform
        .mcp
        .evolutions
        .cancel(&runs[0].evolution_id, &alice())
        .await
        .unwrap();
    assert_eq!(schedule.run_once().await.unwrap().evolutions_started, 0);
}
