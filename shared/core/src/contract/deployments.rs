//! Contract cases of the deployment and proposal stores, through their services where that is
//! how they are used.

use std::sync::Arc;

use super::{Fixture, agent, update};
use crate::agent::{Alias, AliasRoute, PROD_ALIAS};
use crate::clock::ManualClock;
use crate::deployment::{CanaryPolicy, CanaryStatus, DeploymentKind};
use crate::error::{ServiceError, StoreError};
use crate::events::{EventData, EventType};
use crate::feedback::{Feedback, Rating};
use crate::page::PageRequest;
use crate::ports::{AliasMove, CanaryWrite};
use crate::principal::Principal;
use crate::proposal::{ProposalStatus, ReviewDecision, Rollout, VersionChanges};
use crate::services::agents::AgentService;
use crate::services::deployments::{
    DeployVersion, DeploymentService, PromoteCanary, RollbackAgent, StartCanary,
};
use crate::services::proposals::{
    ListProposals, ProposalService, ProposeVersion, ReviewProposal, ReviewRules,
};
use crate::session::{FeedbackId, InteractionId, InteractionStatus, SessionId};

const T0: i64 = 1_790_000_000_000;

impl Fixture {
    fn deployment_service(&self, clock: Arc<ManualClock>) -> DeploymentService {
        DeploymentService::new(
            self.store.clone(),
            self.deployments.clone(),
            clock,
            CanaryPolicy::default(),
        )
    }

    fn agents_at(&self, clock: Arc<ManualClock>) -> AgentService {
        AgentService::new(self.store.clone(), clock, "test-model")
    }
}

fn alice() -> Principal {
    Principal::named("alice")
}

fn one(version: u32) -> Vec<AliasRoute> {
    vec![AliasRoute {
        version,
        weight: 100,
    }]
}

fn deploy(agent_id: &crate::AgentId, version: u32) -> DeployVersion {
    DeployVersion {
        agent_id: agent_id.clone(),
        version,
        alias: None,
        reason: Some("pin it".into()),
    }
}

fn field_of(err: &ServiceError) -> Vec<String> {
    match err {
        ServiceError::Invalid(fields) => fields.iter().map(|f| f.field.clone()).collect(),
        other => panic!("expected an invalid-input error, got {other:?}"),
    }
}

pub async fn deploying_pins_an_alias(f: &Fixture) {
    let clock = Arc::new(ManualClock::at(T0));
    let agents = f.agents_at(clock.clone());
    let deployments = f.deployment_service(clock.clone());
    let id = agents.create(agent("pinned")).await.unwrap().agent.agent_id;
    let v2 = agents.update(update(&id, "two")).await.unwrap();
    assert_eq!(
        v2.agent.alias(PROD_ALIAS).unwrap().routes,
        one(2),
        "prod follows latest"
    );

    clock.advance(1_000);
    let moved = deployments.deploy(deploy(&id, 1), &alice()).await.unwrap();
    let prod = moved.agent.alias(PROD_ALIAS).unwrap();
    assert_eq!(prod.routes, one(1));
    assert!(!prod.follows_latest);
    assert_eq!(moved.deployment.from, one(2));
    assert_eq!(moved.deployment.actor, alice());

    let v3 = agents.update(update(&id, "three")).await.unwrap();
    assert_eq!(v3.version.version, 3);
    let stored = f.store.get_agent(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.alias(PROD_ALIAS).unwrap().routes,
        one(1),
        "a deployed alias no longer follows new versions"
    );

    let history = deployments.list(&id, None, None).await.unwrap().items;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0], moved.deployment);
    assert_eq!(history[0].kind, DeploymentKind::Deploy);
    assert_eq!(history[0].reason, "pin it");
    let deployed: Vec<_> = f
        .events_of(&id)
        .await
        .into_iter()
        .filter_map(|e| match e.data {
            EventData::AgentDeployed(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(deployed.len(), 1);
    assert_eq!(deployed[0].deployment, moved.deployment);

    let err = deployments
        .deploy(deploy(&id, 9), &alice())
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), ["version"], "{err}");
    let beta = deployments
        .deploy(
            DeployVersion {
                alias: Some("beta".into()),
                ..deploy(&id, 3)
            },
            &alice(),
        )
        .await
        .unwrap();
    assert_eq!(beta.agent.alias("beta").unwrap().routes, one(3));
    assert!(
        beta.deployment.from.is_empty(),
        "a new alias moved from nothing"
    );
    let stored = f.store.get_agent(&id).await.unwrap().unwrap();
    assert_eq!(stored.alias(PROD_ALIAS).unwrap().routes, one(1));
    assert_eq!(stored.alias("beta").unwrap().routes, one(3));
}

pub async fn alias_moves_are_compare_and_set(f: &Fixture) {
    let clock = Arc::new(ManualClock::at(T0));
    let agents = f.agents_at(clock.clone());
    let id = agents
        .create(agent("contended"))
        .await
        .unwrap()
        .agent
        .agent_id;
    agents.update(update(&id, "two")).await.unwrap();
    let read = f.store.get_agent(&id).await.unwrap().unwrap();
    let change = |version: u32| AliasMove {
        agent_id: id.clone(),
        expected: read.alias(PROD_ALIAS).cloned(),
        alias: Alias {
            name: PROD_ALIAS.into(),
            routes: one(version),
            follows_latest: false,
            since: T0,
        },
        deployment: crate::samples::deployment(&id, T0),
    };
    let first = change(1);
    f.deployments.move_alias(&first, None, &[]).await.unwrap();
    let loser = change(2);
    let event = crate::samples::event(EventType::AgentDeployed, &id);
    let err = f
        .deployments
        .move_alias(&loser, None, std::slice::from_ref(&event))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let stored = f.store.get_agent(&id).await.unwrap().unwrap();
    assert_eq!(stored.alias(PROD_ALIAS).unwrap().routes, one(1));
    let history = f
        .deployments
        .list_deployments(&id, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "the loser recorded nothing");
    assert!(!f.events_of(&id).await.iter().any(|e| e.id == event.id));

    // A version prepared before the move does not move the alias back.
    let mut stale = agents.get(&id, None).await.unwrap();
    stale.version.version = 3;
    stale.agent.latest_version = 3;
    let err = f
        .store
        .insert_version(&stale.agent, &stale.version, &read.aliases, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

pub async fn a_canary_splits_an_alias_and_only_one_holds_it(f: &Fixture) {
    let clock = Arc::new(ManualClock::at(T0));
    let agents = f.agents_at(clock.clone());
    let deployments = f.deployment_service(clock.clone());
    let id = agents
        .create(agent("canaried"))
        .await
        .unwrap()
        .agent
        .agent_id;
    agents.update(update(&id, "two")).await.unwrap();
    deployments.deploy(deploy(&id, 1), &alice()).await.unwrap();
    let start = |version: u32, steps: Vec<u32>| StartCanary {
        agent_id: id.clone(),
        version,
        alias: None,
        steps: Some(steps),
        policy: None,
        reason: None,
    };
    let err = deployments
        .start_canary(start(2, vec![10, 100]), &alice())
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), ["steps"], "{err}");
    let err = deployments
        .start_canary(start(1, vec![10]), &alice())
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), ["version"], "{err}");

    let moved = deployments
        .start_canary(start(2, vec![10, 50]), &alice())
        .await
        .unwrap();
    let canary = moved.canary.clone().unwrap();
    assert_eq!((canary.baseline, canary.candidate), (1, 2));
    assert_eq!(
        moved.agent.alias(PROD_ALIAS).unwrap().routes,
        [
            AliasRoute {
                version: 1,
                weight: 90
            },
            AliasRoute {
                version: 2,
                weight: 10
            }
        ]
    );
    let stored = f
        .deployments
        .canary(&canary.canary_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, canary);
    assert_eq!(
        f.deployments
            .latest_canary(&id, PROD_ALIAS)
            .await
            .unwrap()
            .unwrap()
            .canary_id,
        canary.canary_id
    );
    assert!(
        f.deployments
            .watched_canaries()
            .await
            .unwrap()
            .iter()
            .any(|c| c.canary_id == canary.canary_id)
    );
    assert!(matches!(
        deployments.start_canary(start(2, vec![10]), &alice()).await,
        Err(ServiceError::Conflict(_))
    ));
    assert!(matches!(
        deployments.deploy(deploy(&id, 2), &alice()).await,
        Err(ServiceError::Conflict(_))
    ));

    // Canary writes are compare-and-set on the revision.
    let mut stale = canary.clone();
    stale.revision = 7;
    let err = f
        .deployments
        .save_canary(
            CanaryWrite {
                canary: &stale,
                expected_revision: Some(6),
            },
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let promote = |force: bool| PromoteCanary {
        canary_id: canary.canary_id.clone(),
        force,
        reason: None,
    };
    let err = deployments
        .promote(promote(false), &alice())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("force"), "{err}");
    clock.advance(60_000);
    let promoted = deployments.promote(promote(true), &alice()).await.unwrap();
    assert_eq!(promoted.agent.alias(PROD_ALIAS).unwrap().routes, one(2));
    let baking = promoted.canary.unwrap();
    assert_eq!(baking.status, CanaryStatus::Baking);
    assert_eq!(baking.promoted_at, Some(T0 + 60_000));

    let rolled = deployments
        .rollback(
            RollbackAgent {
                agent_id: id.clone(),
                alias: None,
                to_version: None,
                reason: "users complain".into(),
            },
            &alice(),
        )
        .await
        .unwrap();
    assert_eq!(rolled.agent.alias(PROD_ALIAS).unwrap().routes, one(1));
    assert_eq!(rolled.canary.unwrap().status, CanaryStatus::RolledBack);
    assert!(
        !f.deployments
            .watched_canaries()
            .await
            .unwrap()
            .iter()
            .any(|c| c.canary_id == canary.canary_id)
    );
    let kinds: Vec<DeploymentKind> = deployments
        .list(&id, None, None)
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            DeploymentKind::Deploy,
            DeploymentKind::CanaryStarted,
            DeploymentKind::CanaryPromoted,
            DeploymentKind::CanaryRolledBack
        ]
    );
    let types: Vec<EventType> = f
        .events_of(&id)
        .await
        .iter()
        .map(crate::DomainEvent::event_type)
        .filter(|t| t.as_str().starts_with("deployment."))
        .collect();
    assert_eq!(
        types,
        [
            EventType::CanaryStarted,
            EventType::CanaryPromoted,
            EventType::CanaryRolledBack
        ]
    );
}

pub async fn rollback_without_a_canary_returns_to_the_previous_version(f: &Fixture) {
    let clock = Arc::new(ManualClock::at(T0));
    let agents = f.agents_at(clock.clone());
    let deployments = f.deployment_service(clock.clone());
    let id = agents.create(agent("rolled")).await.unwrap().agent.agent_id;
    agents.update(update(&id, "two")).await.unwrap();
    let back = |to_version: Option<u32>| RollbackAgent {
        agent_id: id.clone(),
        alias: None,
        to_version,
        reason: "bad answers".into(),
    };
    let err = deployments
        .rollback(back(None), &alice())
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), ["to_version"], "{err}");
    assert!(err.to_string().contains("nothing to roll back to"), "{err}");
    deployments.deploy(deploy(&id, 1), &alice()).await.unwrap();
    let moved = deployments.rollback(back(None), &alice()).await.unwrap();
    assert_eq!(moved.agent.alias(PROD_ALIAS).unwrap().routes, one(2));
    assert_eq!(moved.deployment.kind, DeploymentKind::Rollback);
    let err = deployments
        .rollback(back(Some(2)), &alice())
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), ["to_version"], "{err}");
    let err = deployments
        .rollback(back(Some(5)), &alice())
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), ["to_version"], "{err}");
}

pub async fn turns_since_counts_the_agents_own_turns_of_new_sessions(f: &Fixture) {
    let svc = f.service();
    let id = svc.create(agent("measured")).await.unwrap().agent.agent_id;
    let session = |version: u32, created_at: i64| {
        let mut s = crate::samples::session(&id);
        s.version = version;
        s.created_at = created_at;
        s
    };
    let (old, v1, v2) = (
        session(1, T0 - 10_000),
        session(1, T0 + 10),
        session(2, T0 + 20),
    );
    for s in [&old, &v1, &v2] {
        f.sessions.insert_session(s, &[]).await.unwrap();
    }
    let turn = |version: u32, session: Option<&SessionId>, created_at: i64| {
        let mut i = crate::samples::interaction(&id, version);
        i.session_id = session.cloned();
        i.created_at = created_at;
        i
    };
    let before = turn(1, Some(&old.session_id), T0 + 100);
    let mut failed = turn(1, Some(&v1.session_id), T0 + 110);
    failed.status = InteractionStatus::Failed;
    failed.output = None;
    failed.latency_ms = 50;
    let rated = turn(2, Some(&v2.session_id), T0 + 120);
    let mut delegated = turn(2, Some(&v2.session_id), T0 + 130);
    delegated.parent_interaction_id = Some(rated.interaction_id.clone());
    let one_shot = turn(1, None, T0 + 140);
    let too_early = turn(1, None, T0 - 1);
    for i in [&before, &failed, &rated, &delegated, &one_shot, &too_early] {
        f.sessions.record_turn(i, &[], &[]).await.unwrap();
    }
    let feedback = |interaction: &InteractionId, metric: &str, normalized: f64| Feedback {
        submitted_by: None,
        feedback_id: FeedbackId::generate(),
        agent_id: id.clone(),
        version: 2,
        session_id: Some(v2.session_id.clone()),
        interaction_id: Some(interaction.clone()),
        ratings: vec![Rating {
            metric: metric.into(),
            value: normalized,
            scale_min: 0.0,
            scale_max: 1.0,
            normalized,
        }],
        comments: None,
        categories: Vec::new(),
        user_id: "u".into(),
        created_at: T0 + 200,
    };
    for fb in [
        feedback(&rated.interaction_id, "helpfulness", 1.0),
        feedback(&rated.interaction_id, "helpfulness", 0.5),
        feedback(&rated.interaction_id, "accuracy", 0.25),
    ] {
        f.feedback.insert_feedback(&fb, &[]).await.unwrap();
    }

    let mut turns = f.deployments.turns_since(&id, T0).await.unwrap();
    turns.sort_by_key(|t| (t.version, t.failed, t.latency_ms));
    assert_eq!(turns.len(), 3, "{turns:?}");
    let failed_turn = turns.iter().find(|t| t.failed).unwrap();
    assert_eq!((failed_turn.version, failed_turn.latency_ms), (1, 50));
    assert!(
        turns
            .iter()
            .any(|t| t.version == 1 && !t.failed && t.ratings.is_empty())
    );
    let rated_turn = turns.iter().find(|t| t.version == 2).unwrap();
    let mut ratings = rated_turn.ratings.clone();
    ratings.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        ratings,
        [("accuracy".into(), 0.25), ("helpfulness".into(), 0.75)]
    );
    assert_eq!(rated_turn.cost_usd, rated.cost_usd);

    let mut sessions = f
        .deployments
        .sessions_since(&id, PROD_ALIAS, T0)
        .await
        .unwrap();
    sessions.sort_unstable();
    assert_eq!(sessions, [(1, 1), (2, 1)]);
    assert!(
        f.deployments
            .sessions_since(&id, "beta", T0)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn proposals_round_trip_and_compare_and_set(f: &Fixture) {
    let svc = f.service();
    let id = svc.create(agent("proposed")).await.unwrap().agent.agent_id;
    let mut proposal = crate::samples::proposal(&id, T0);
    proposal.changes.capabilities = Some(vec![crate::agent::Capability {
        name: "lookup".into(),
        description: "find things".into(),
        parameters: Some(serde_json::json!({"type": "object"})),
        effectiveness: Some(0.5),
        delegate_to: None,
    }]);
    let event = crate::samples::event(EventType::ProposalCreated, &id);
    f.proposals
        .insert_proposal(&proposal, std::slice::from_ref(&event))
        .await
        .unwrap();
    assert_eq!(
        f.proposals
            .proposal(&proposal.proposal_id)
            .await
            .unwrap()
            .unwrap(),
        proposal
    );
    assert!(f.events_of(&id).await.iter().any(|e| e.id == event.id));

    let mut reviewed = proposal.clone();
    reviewed.reviews.push(crate::proposal::Review {
        reviewer: Principal::named("bob"),
        decision: ReviewDecision::Approve,
        comment: "good".into(),
        created_at: T0 + 1,
    });
    reviewed.revision = 1;
    f.proposals.save_proposal(&reviewed, 0, &[]).await.unwrap();
    let err = f
        .proposals
        .save_proposal(&reviewed, 0, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        f.proposals
            .proposal(&proposal.proposal_id)
            .await
            .unwrap()
            .unwrap(),
        reviewed
    );

    let page = PageRequest::default();
    let mine = f
        .proposals
        .list_proposals(Some(&id), None, &page)
        .await
        .unwrap();
    assert_eq!(mine, [reviewed.clone()]);
    let pending = f
        .proposals
        .list_proposals(Some(&id), Some(ProposalStatus::Pending), &page)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert!(
        f.proposals
            .list_proposals(Some(&id), Some(ProposalStatus::Rejected), &page)
            .await
            .unwrap()
            .is_empty()
    );
    let expiring = f
        .proposals
        .expiring_proposals(proposal.expires_at)
        .await
        .unwrap();
    assert!(
        expiring
            .iter()
            .any(|p| p.proposal_id == proposal.proposal_id)
    );
    assert!(
        !f.proposals
            .expiring_proposals(proposal.expires_at - 1)
            .await
            .unwrap()
            .iter()
            .any(|p| p.proposal_id == proposal.proposal_id)
    );
}

pub async fn a_proposal_needs_its_approvals_and_not_its_proposers(f: &Fixture) {
    let clock = Arc::new(ManualClock::at(T0));
    let agents = f.agents_at(clock.clone());
    let deployments = f.deployment_service(clock.clone());
    let rules = ReviewRules {
        reviewers: Vec::new(),
        required_approvals: Some(2),
        ttl_ms: 3_600_000,
    };
    let proposals = ProposalService::new(
        agents.clone(),
        deployments.clone(),
        f.proposals.clone(),
        clock.clone(),
        rules,
    );
    let id = agents
        .create(agent("reviewed"))
        .await
        .unwrap()
        .agent
        .agent_id;
    let propose = || ProposeVersion {
        agent_id: id.clone(),
        base_version: 1,
        changes: VersionChanges {
            instructions: Some("answer in one sentence".into()),
            ..VersionChanges::default()
        },
        rationale: "shorter answers".into(),
        rollout: Some(Rollout::Canary),
    };
    let err = proposals
        .propose(
            ProposeVersion {
                base_version: 4,
                ..propose()
            },
            &alice(),
        )
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), ["base_version"], "{err}");
    let proposal = proposals.propose(propose(), &alice()).await.unwrap();
    assert_eq!(proposal.required_approvals, 2);
    let review = |decision| ReviewProposal {
        proposal_id: proposal.proposal_id.clone(),
        decision,
        comment: Some("ok".into()),
    };
    let err = proposals
        .review(review(ReviewDecision::Approve), &alice())
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Forbidden(_)), "{err:?}");
    let err = proposals
        .review(review(ReviewDecision::Approve), &Principal::anonymous())
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Forbidden(_)), "{err:?}");

    let first = proposals
        .review(review(ReviewDecision::Approve), &Principal::named("bob"))
        .await
        .unwrap();
    assert_eq!(first.proposal.status, ProposalStatus::Pending);
    assert!(first.version.is_none());
    let err = proposals
        .review(review(ReviewDecision::Approve), &Principal::named("bob"))
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Conflict(_)), "{err:?}");

    let second = proposals
        .review(review(ReviewDecision::Approve), &Principal::named("carol"))
        .await
        .unwrap();
    assert_eq!(second.proposal.status, ProposalStatus::Applied);
    let version = second.version.clone().unwrap().version;
    assert_eq!(version.version, 2);
    assert_eq!(version.instructions, "answer in one sentence");
    assert_eq!(version.parents.len(), 1);
    assert_eq!(version.parents[0].version, 1);
    assert_eq!(second.proposal.version, Some(2));
    let canary = second.rollout.clone().unwrap().canary.unwrap();
    assert_eq!((canary.baseline, canary.candidate), (1, 2));
    assert_eq!(canary.started_by, Principal::named("carol"));
    let types: Vec<EventType> = f
        .events_of(&id)
        .await
        .iter()
        .map(crate::DomainEvent::event_type)
        .filter(|t| t.as_str().starts_with("proposal."))
        .collect();
    assert_eq!(
        types,
        [
            EventType::ProposalCreated,
            EventType::ProposalReviewed,
            EventType::ProposalReviewed,
            EventType::ProposalApproved
        ]
    );

    // A rejection closes a proposal; time closes the rest.
    let rejected = proposals.propose(propose(), &alice()).await.unwrap();
    let closed = proposals
        .review(
            ReviewProposal {
                proposal_id: rejected.proposal_id.clone(),
                decision: ReviewDecision::Reject,
                comment: None,
            },
            &Principal::named("bob"),
        )
        .await
        .unwrap();
    assert_eq!(closed.proposal.status, ProposalStatus::Rejected);
    let stale = proposals.propose(propose(), &alice()).await.unwrap();
    clock.advance(3_600_000);
    assert!(proposals.expire().await.unwrap() >= 1);
    assert_eq!(
        proposals.get(&stale.proposal_id).await.unwrap().status,
        ProposalStatus::Expired
    );
    let listed = proposals
        .list(ListProposals {
            agent_id: Some(id.clone()),
            status: Some("expired".into()),
            ..ListProposals::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let err = proposals
        .list(ListProposals {
            status: Some("open".into()),
            ..ListProposals::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), ["status"]);
}

pub async fn racing_controllers_and_redelivery_move_an_alias_once(f: &Fixture) {
    let clock = Arc::new(ManualClock::at(T0));
    let agents = f.agents_at(clock.clone());
    let deployments = f.deployment_service(clock.clone());
    let id = agents.create(agent("raced")).await.unwrap().agent.agent_id;
    agents.update(update(&id, "two")).await.unwrap();
    deployments.deploy(deploy(&id, 1), &alice()).await.unwrap();
    let canary = deployments
        .start_canary(
            StartCanary {
                agent_id: id.clone(),
                version: 2,
                alias: None,
                steps: Some(vec![10, 50]),
                policy: Some(serde_json::json!({"step_min_seconds": 0, "step_min_sessions": 0})),
                reason: None,
            },
            &alice(),
        )
        .await
        .unwrap()
        .canary
        .unwrap();
    clock.advance(1_000);
    let controller = crate::services::controller::DeploymentController::new(
        deployments.clone(),
        clock.clone(),
        0,
    );
    let event = crate::samples::event(EventType::InteractionCompleted, &id);
    use crate::handler::EventHandler as _;
    let (a, b) = tokio::join!(controller.handle(&event), controller.handle(&event));
    a.unwrap();
    b.unwrap();
    let advanced = |history: Vec<crate::deployment::Deployment>| {
        history
            .iter()
            .filter(|d| d.kind == DeploymentKind::CanaryStepAdvanced)
            .count()
    };
    let history = deployments.list(&id, None, None).await.unwrap().items;
    assert_eq!(
        advanced(history),
        1,
        "two controllers racing move the alias once"
    );
    let now = f
        .deployments
        .canary(&canary.canary_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.step, 1);
    // The loser either conflicted or, reading after the winner, held at the last step.
    assert!(now.revision > canary.revision);

    // The same event again (a redelivery): the last step holds, nothing moves.
    clock.advance(1_000);
    controller.handle(&event).await.unwrap();
    let (x, y) = tokio::join!(
        deployments.evaluate(&canary.canary_id),
        deployments.evaluate(&canary.canary_id)
    );
    x.unwrap();
    y.unwrap();
    let history = deployments.list(&id, None, None).await.unwrap().items;
    assert_eq!(advanced(history.clone()), 1);
    assert_eq!(history.len(), 3, "deploy, canary started, one step");
    let stored = f.store.get_agent(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.alias(PROD_ALIAS).unwrap().routes,
        [
            AliasRoute {
                version: 1,
                weight: 50
            },
            AliasRoute {
                version: 2,
                weight: 50
            }
        ]
    );
}
