//! A store filled with one or more of everything a backup holds, written through the store
//! ports the way the platform writes it: what the backup tests move between stores.

use super::evolutions::{candidate, eval_case, run_of};
use super::{Fixture, agent, update};
use crate::agent::{Alias, AliasRoute, PROD_ALIAS};
use crate::deployment::CanaryStatus;
use crate::error::ServiceError;
use crate::evolution::Spend;
use crate::feedback::{FitnessUpdate, Metric};
use crate::ports::{AliasMove, CacheEntry, CanaryWrite};
use crate::principal::Principal;
use crate::proposal::{Review, ReviewDecision};
use crate::samples;
use crate::session::{InteractionStatus, Message, Role, ToolCallRecord};

/// Two agents (one with two versions), an ended session with a turn that delegated to the
/// other agent, a failed one-shot turn, feedback on the turn and on the session, fitness and
/// its applied-event ledger, a deployment that started a canary, a reviewed proposal,
/// evaluation cases, an evolution with a seed and a child candidate and cached results, and
/// the events all of it left in the outbox.
///
/// # Errors
/// What the store or a service reports.
pub async fn populate(f: &Fixture) -> Result<(), ServiceError> {
    let svc = f.service();
    let a = svc.create(agent("backup-writer")).await?;
    let b = svc.create(agent("backup-expert")).await?;
    let a_id = a.agent.agent_id.clone();
    let b_id = b.agent.agent_id.clone();
    let a2 = svc.update(update(&a_id, "You are brief.")).await?;

    let mut session = samples::session(&a_id);
    session.user_id = "user-7".into();
    session.context = serde_json::json!({"locale": "en-GB"});
    f.sessions.insert_session(&session, &[]).await?;
    let mut turn = samples::interaction(&a_id, 1);
    let mut delegated = samples::interaction(&b_id, 1);
    delegated.input = "what is 2+2?".into();
    delegated.parent_interaction_id = Some(turn.interaction_id.clone());
    // A delegated turn is recorded before the turn that asked for it.
    f.sessions.record_turn(&delegated, &[], &[]).await?;
    turn.session_id = Some(session.session_id.clone());
    turn.cost_usd = Some(0.000_125);
    turn.invoked_by = Some(Principal::named("alice"));
    turn.tool_calls = vec![ToolCallRecord {
        call_id: "call_1".into(),
        name: "ask_expert".into(),
        arguments: r#"{"question":"what is 2+2?"}"#.into(),
        delegate_agent_id: Some(b_id.clone()),
        delegate_interaction_id: Some(delegated.interaction_id.clone()),
        result: "4".into(),
        is_error: false,
    }];
    let messages = [(Role::User, "hello"), (Role::Assistant, "hi, it is 4")]
        .into_iter()
        .enumerate()
        .map(|(i, (role, content))| Message {
            session_id: session.session_id.clone(),
            seq: i as u32 + 1,
            role,
            content: content.into(),
            interaction_id: turn.interaction_id.clone(),
            created_at: turn.created_at + i as i64,
        })
        .collect::<Vec<_>>();
    f.sessions.record_turn(&turn, &messages, &[]).await?;
    f.sessions
        .end_session(
            &session.session_id,
            Some("said hello"),
            turn.created_at + 10,
            &[],
        )
        .await?;
    let mut failed = samples::interaction(&a_id, 2);
    failed.status = InteractionStatus::Failed;
    failed.output = None;
    failed.error = Some("the model timed out".into());
    f.sessions.record_turn(&failed, &[], &[]).await?;

    let mut on_turn = samples::feedback(&a_id, 1, &[("helpfulness", 4.0), ("accuracy", 5.0)]);
    on_turn.interaction_id = Some(turn.interaction_id.clone());
    on_turn.session_id = Some(session.session_id.clone());
    on_turn.comments = Some("good".into());
    on_turn.categories = vec!["tone".into()];
    on_turn.submitted_by = Some(Principal::named("alice"));
    f.feedback.insert_feedback(&on_turn, &[]).await?;
    let mut on_session = samples::feedback(&a_id, 1, &[("helpfulness", 2.0)]);
    on_session.session_id = Some(session.session_id.clone());
    f.feedback.insert_feedback(&on_session, &[]).await?;
    let updates = [
        FitnessUpdate {
            agent_id: a_id.clone(),
            version: 1,
            metric: Metric::rating("helpfulness"),
            value: 0.75,
        },
        FitnessUpdate {
            agent_id: a_id.clone(),
            version: 1,
            metric: Metric::rating("helpfulness"),
            value: 0.25,
        },
        FitnessUpdate {
            agent_id: a_id.clone(),
            version: 1,
            metric: Metric::TurnLatencyMs,
            value: 420.0,
        },
    ];
    f.feedback
        .apply_each_once(&[
            ("evt-fitness-1", &updates[..2]),
            ("evt-fitness-2", &updates[2..]),
        ])
        .await?;

    let now = a2.version.created_at + 1_000;
    let mut canary = samples::canary(&a_id, now);
    canary.status = CanaryStatus::Running;
    let mut deployment = samples::deployment(&a_id, now);
    deployment.canary_id = Some(canary.canary_id.clone());
    deployment.to = vec![
        AliasRoute {
            version: 1,
            weight: 90,
        },
        AliasRoute {
            version: 2,
            weight: 10,
        },
    ];
    let expected = a2.agent.alias(PROD_ALIAS).cloned();
    f.deployments
        .move_alias(
            &AliasMove {
                agent_id: a_id.clone(),
                expected,
                alias: Alias {
                    name: PROD_ALIAS.into(),
                    routes: deployment.to.clone(),
                    follows_latest: false,
                    since: now,
                },
                deployment,
            },
            Some(CanaryWrite {
                canary: &canary,
                expected_revision: None,
            }),
            &[],
        )
        .await?;

    let proposal = samples::proposal(&a_id, now);
    f.proposals.insert_proposal(&proposal, &[]).await?;
    let mut reviewed = proposal.clone();
    reviewed.reviews.push(Review {
        reviewer: Principal::named("bob"),
        decision: ReviewDecision::Approve,
        comment: "fine".into(),
        created_at: now + 5,
    });
    reviewed.revision = 1;
    f.proposals.save_proposal(&reviewed, 0, &[]).await?;

    f.evolutions
        .insert_eval_cases(&[eval_case(&a_id, 1), eval_case(&a_id, 2)])
        .await?;
    let mut run = run_of(&a_id);
    f.evolutions.insert_evolution(&run, &[]).await?;
    let seed = candidate(&run, Vec::new(), "You are brief.");
    let child = candidate(&run, vec![seed.candidate_id.clone()], "You are very brief.");
    run.iteration = 1;
    run.revision = 1;
    f.evolutions
        .save_evolution(&run, 0, &[seed, child], &[])
        .await?;
    f.evolutions
        .cache(
            &run.evolution_id,
            &[CacheEntry {
                key: "run:case_1".into(),
                iteration: 1,
                spend: Spend {
                    metric_calls: 1,
                    llm_calls: 2,
                    tokens: 300,
                    cost_usd: 0.000_5,
                },
                value: serde_json::json!({"score": 0.5, "output": "4"}),
            }],
        )
        .await?;
    Ok(())
}
