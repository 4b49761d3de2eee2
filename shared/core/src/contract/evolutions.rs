//! Contract cases of the evolution store: evaluation cases, runs (one running per agent,
//! compare-and-set with their candidates and events), the evaluation cache, and the rated
//! turns a run replays.

use super::{Fixture, agent, interaction_for};
use crate::error::StoreError;
use crate::events::{DomainEvent, EventType, payload};
use crate::evolution::{
    Candidate, CandidateId, Check, Components, EvalCase, EvalCaseId, Evolution, EvolutionId,
    EvolutionMode, EvolutionSettings, EvolutionStatus, MinibatchScores, Operator, Spend,
};
use crate::feedback::{Feedback, Rating};
use crate::page::{Cursor, PageRequest};
use crate::ports::CacheEntry;
use crate::principal::Principal;
use crate::session::{FeedbackId, InteractionStatus};

pub(super) fn eval_case(agent_id: &crate::AgentId, n: usize) -> EvalCase {
    EvalCase {
        case_id: EvalCaseId::generate(),
        agent_id: agent_id.clone(),
        input: format!("What is {n} plus {n}?"),
        checks: vec![
            Check::Equals {
                value: (2 * n).to_string(),
                ignore_case: false,
            },
            Check::JsonSchema {
                schema: serde_json::json!({"type": "object", "required": ["total"]}),
            },
        ],
        expected: Some((2 * n).to_string()),
        tags: vec!["arithmetic".into()],
        created_at: 1_000 + n as i64,
    }
}

pub(super) fn run_of(agent_id: &crate::AgentId) -> Evolution {
    Evolution {
        evolution_id: EvolutionId::generate(),
        agent_id: agent_id.clone(),
        alias: "prod".into(),
        mode: EvolutionMode::Review,
        settings: EvolutionSettings::default(),
        status: EvolutionStatus::Running,
        seed_version: 1,
        model: "gpt-4o-mini".into(),
        cases: Vec::new(),
        valset: vec![0, 1],
        trainset: vec![2],
        iteration: 0,
        pool: Vec::new(),
        best: None,
        best_score: None,
        seed_score: None,
        stale_iterations: 0,
        history: Vec::new(),
        spend: Spend::default(),
        stop_reason: None,
        winner: None,
        error: None,
        retries: 0,
        started_by: Principal::named("alice"),
        started_at: 5_000,
        updated_at: 5_000,
        finished_at: None,
        revision: 0,
    }
}

pub(super) fn candidate(run: &Evolution, parents: Vec<CandidateId>, text: &str) -> Candidate {
    let components = Components {
        instructions: text.into(),
        capability_descriptions: vec![("ask".into(), "Ask the expert".into())],
    };
    Candidate {
        candidate_id: CandidateId::generate(),
        evolution_id: run.evolution_id.clone(),
        iteration: run.iteration,
        hash: components.hash(&run.model),
        operator: if parents.is_empty() {
            Operator::Seed
        } else {
            Operator::Reflection
        },
        parents,
        components,
        minibatch: Some(MinibatchScores {
            case_ids: vec!["case_a".into()],
            parent: vec![0.0],
            child: vec![1.0],
        }),
        val_scores: vec![0.5, 1.0],
        val_mean: Some(0.75),
        accepted: true,
        rationale: "states the format".into(),
        created_at: 6_000,
    }
}

fn requested(run: &Evolution) -> DomainEvent {
    DomainEvent::new(
        &run.agent_id,
        run.updated_at,
        payload::EvolutionGenerationRequested {
            evolution_id: run.evolution_id.clone(),
            iteration: run.iteration,
        },
    )
}

pub async fn eval_cases_round_trip_page_and_remove(f: &Fixture) {
    let svc = f.service();
    let a = svc.create(agent("graded")).await.unwrap().agent.agent_id;
    let b = svc.create(agent("other")).await.unwrap().agent.agent_id;
    let mine: Vec<EvalCase> = (1..=5).map(|n| eval_case(&a, n)).collect();
    let theirs = eval_case(&b, 9);
    f.evolutions.insert_eval_cases(&mine).await.unwrap();
    f.evolutions
        .insert_eval_cases(std::slice::from_ref(&theirs))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut page = PageRequest {
        after: None,
        limit: 2,
    };
    loop {
        let mut rows = f.evolutions.list_eval_cases(&a, &page).await.unwrap();
        let more = rows.len() > 2;
        rows.truncate(2);
        page.after = rows.last().map(|c| Cursor::after(c.case_id.to_string()));
        seen.extend(rows);
        if !more {
            break;
        }
    }
    assert_eq!(
        seen, mine,
        "every case once, oldest first, every field kept"
    );

    assert!(
        !f.evolutions
            .remove_eval_case(&a, &theirs.case_id)
            .await
            .unwrap(),
        "a case is removed only through its own agent"
    );
    assert!(
        f.evolutions
            .remove_eval_case(&a, &mine[0].case_id)
            .await
            .unwrap()
    );
    assert!(
        !f.evolutions
            .remove_eval_case(&a, &mine[0].case_id)
            .await
            .unwrap()
    );
    let left = f
        .evolutions
        .list_eval_cases(&a, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(left, mine[1..]);
}

pub async fn one_running_evolution_per_agent_and_runs_are_compare_and_set(f: &Fixture) {
    let svc = f.service();
    let a = svc.create(agent("evolving")).await.unwrap().agent.agent_id;
    let b = svc
        .create(agent("also evolving"))
        .await
        .unwrap()
        .agent
        .agent_id;
    let run = run_of(&a);
    f.evolutions
        .insert_evolution(&run, &[requested(&run)])
        .await
        .unwrap();
    let second = run_of(&a);
    assert!(matches!(
        f.evolutions.insert_evolution(&second, &[]).await,
        Err(StoreError::Conflict(_))
    ));
    let other = run_of(&b);
    f.evolutions.insert_evolution(&other, &[]).await.unwrap();
    assert_eq!(
        f.evolutions.evolution(&run.evolution_id).await.unwrap(),
        Some(run.clone())
    );
    assert_eq!(
        f.evolutions.evolution(&second.evolution_id).await.unwrap(),
        None
    );

    // A stale revision writes nothing: not the run, its candidates or its events.
    let seed = candidate(&run, Vec::new(), "be exact");
    let child = candidate(
        &run,
        vec![seed.candidate_id.clone()],
        "be exact; answer in JSON",
    );
    let mut next = run.clone();
    next.iteration = 1;
    next.pool = vec![seed.candidate_id.clone(), child.candidate_id.clone()];
    next.best = Some(child.candidate_id.clone());
    next.best_score = Some(0.75);
    next.revision = 1;
    let events_before = f.outbox.pending(10_000).await.unwrap().len();
    let stale = f
        .evolutions
        .save_evolution(
            &next,
            7,
            &[seed.clone(), child.clone()],
            &[requested(&next)],
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    assert!(
        f.evolutions
            .candidates(&run.evolution_id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(f.outbox.pending(10_000).await.unwrap().len(), events_before);

    f.evolutions
        .save_evolution(
            &next,
            0,
            &[seed.clone(), child.clone()],
            &[requested(&next)],
        )
        .await
        .unwrap();
    assert_eq!(
        f.evolutions.candidates(&run.evolution_id).await.unwrap(),
        vec![seed, child],
        "candidates come back whole, in the order made"
    );
    assert_eq!(
        f.evolutions.evolution(&run.evolution_id).await.unwrap(),
        Some(next.clone())
    );
    let events = f.outbox.pending(10_000).await.unwrap();
    let requests = events
        .iter()
        .filter(|e| {
            e.subject == run.agent_id && e.event_type() == EventType::EvolutionGenerationRequested
        })
        .count();
    assert_eq!(requests, 2, "the insert's event and the save's");

    let running: Vec<EvolutionId> = f
        .evolutions
        .running_evolutions()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.evolution_id)
        .collect();
    assert!(running.contains(&run.evolution_id) && running.contains(&other.evolution_id));

    // Once it ends, the agent can start another.
    let mut done = next.clone();
    done.status = EvolutionStatus::Completed;
    done.finished_at = Some(9_000);
    done.revision = 2;
    f.evolutions
        .save_evolution(&done, 1, &[], &[])
        .await
        .unwrap();
    assert!(
        !f.evolutions
            .running_evolutions()
            .await
            .unwrap()
            .iter()
            .any(|r| r.evolution_id == run.evolution_id)
    );
    let third = run_of(&a);
    f.evolutions.insert_evolution(&third, &[]).await.unwrap();

    // Newest first, by agent or all, a page at a time.
    let of_a = f
        .evolutions
        .list_evolutions(Some(&a), &PageRequest::default())
        .await
        .unwrap();
    let ids: Vec<&EvolutionId> = of_a.iter().map(|r| &r.evolution_id).collect();
    assert_eq!(ids, [&third.evolution_id, &run.evolution_id]);
    let first_page = f
        .evolutions
        .list_evolutions(
            None,
            &PageRequest {
                after: None,
                limit: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        first_page.len(),
        2,
        "one more than the page, to tell there is more"
    );
    let rest = f
        .evolutions
        .list_evolutions(
            None,
            &PageRequest {
                after: Some(Cursor::after(first_page[0].evolution_id.to_string())),
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert!(
        rest.iter()
            .all(|r| r.evolution_id < first_page[0].evolution_id)
    );
    assert!(rest.iter().any(|r| r.evolution_id == other.evolution_id));
}

pub async fn the_evaluation_cache_keeps_first_results_and_sums_spend_per_iteration(f: &Fixture) {
    let svc = f.service();
    let a = svc.create(agent("cached")).await.unwrap().agent.agent_id;
    let run = run_of(&a);
    f.evolutions.insert_evolution(&run, &[]).await.unwrap();
    let entry = |key: &str, iteration: u32, cost: f64, output: &str| CacheEntry {
        key: key.into(),
        iteration,
        spend: Spend {
            metric_calls: 1,
            llm_calls: 2,
            tokens: 70,
            cost_usd: cost,
        },
        value: serde_json::json!({"case_id": key, "output": output, "score": 1.0, "feedback": "ok"}),
    };
    let first = [
        entry("eval:h1:case_1", 0, 0.25, "2"),
        entry("eval:h1:case_2", 0, 0.5, "4"),
        entry("eval:h2:case_1", 1, 1.0, "two"),
    ];
    f.evolutions.cache(&run.evolution_id, &first).await.unwrap();
    // The same key again keeps what was paid first.
    f.evolutions
        .cache(
            &run.evolution_id,
            &[entry("eval:h1:case_1", 3, 9.0, "changed")],
        )
        .await
        .unwrap();
    let mut hits = f
        .evolutions
        .cached(
            &run.evolution_id,
            &[
                "eval:h1:case_1".into(),
                "eval:h9:case_1".into(),
                "eval:h2:case_1".into(),
            ],
        )
        .await
        .unwrap();
    hits.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(hits, vec![first[0].clone(), first[2].clone()]);

    let spent = f.evolutions.spent_in(&run.evolution_id, 0).await.unwrap();
    assert_eq!(
        spent,
        Spend {
            metric_calls: 2,
            llm_calls: 4,
            tokens: 140,
            cost_usd: 0.75,
        }
    );
    assert_eq!(
        f.evolutions.spent_in(&run.evolution_id, 5).await.unwrap(),
        Spend::default()
    );
    let other = run_of(&svc.create(agent("other")).await.unwrap().agent.agent_id);
    assert!(
        f.evolutions
            .cached(&other.evolution_id, &["eval:h1:case_1".into()])
            .await
            .unwrap()
            .is_empty(),
        "each run has its own cache"
    );
}

pub async fn rated_turns_bring_their_ratings_and_comments_newest_first(f: &Fixture) {
    let svc = f.service();
    let a = svc.create(agent("rated")).await.unwrap().agent.agent_id;
    let turn = |input: &str, at: i64| {
        let mut i = interaction_for(&a, None);
        i.input = input.into();
        i.tool_calls.clear();
        i.created_at = at;
        i
    };
    let old = turn("too old", 1_000);
    let unrated = turn("nobody rated this", 3_000);
    let good = turn("rated twice", 4_000);
    let mut failed = turn("failed and rated", 5_000);
    failed.status = InteractionStatus::Failed;
    failed.output = None;
    for i in [&old, &unrated, &good, &failed] {
        f.sessions.record_turn(i, &[], &[]).await.unwrap();
    }
    let feedback =
        |i: &crate::session::Interaction, metric: &str, v: f64, comment: Option<&str>, at: i64| {
            Feedback {
                submitted_by: None,
                feedback_id: FeedbackId::generate(),
                agent_id: a.clone(),
                version: 1,
                session_id: None,
                interaction_id: Some(i.interaction_id.clone()),
                ratings: vec![Rating {
                    metric: metric.into(),
                    value: v,
                    scale_min: 0.0,
                    scale_max: 1.0,
                    normalized: v,
                }],
                comments: comment.map(str::to_owned),
                categories: Vec::new(),
                user_id: "u".into(),
                created_at: at,
            }
        };
    for fb in [
        feedback(&old, "helpfulness", 1.0, None, 1_100),
        feedback(&good, "helpfulness", 1.0, Some("clear"), 4_100),
        feedback(&good, "helpfulness", 0.5, Some("a bit long"), 4_200),
        feedback(&good, "accuracy", 0.25, None, 4_300),
        feedback(&failed, "helpfulness", 0.0, Some("it broke"), 5_100),
    ] {
        f.feedback.insert_feedback(&fb, &[]).await.unwrap();
    }

    let turns = f.evolutions.rated_turns(&a, 2_000, 10).await.unwrap();
    let inputs: Vec<&str> = turns.iter().map(|t| t.input.as_str()).collect();
    assert_eq!(inputs, ["failed and rated", "rated twice"]);
    assert!(turns[0].failed && turns[0].output.is_none());
    assert_eq!(turns[0].comments, ["it broke"]);
    let rated = &turns[1];
    assert!(!rated.failed);
    assert_eq!(rated.output.as_deref(), Some("hi there"));
    assert_eq!(
        rated.ratings,
        vec![
            ("accuracy".to_owned(), 0.25),
            ("helpfulness".to_owned(), 0.75)
        ]
    );
    assert_eq!(rated.comments, ["clear", "a bit long"]);
    assert_eq!(rated.interaction_id, good.interaction_id);

    let newest = f.evolutions.rated_turns(&a, 0, 1).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].input, "failed and rated");
}
