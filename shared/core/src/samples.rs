//! Valid sample values of the domain, for tests of adapters and entry points (feature
//! `contract`): an event of every type, an interaction, feedback.

use crate::agent::{
    Agent, AgentId, AgentStatus, AgentVersion, Alias, AliasRoute, ModelParameters, PROD_ALIAS,
};
use crate::deployment::{
    Canary, CanaryId, CanaryPolicy, CanaryStatus, Deployment, DeploymentId, DeploymentKind,
};
use crate::events::{DomainEvent, EventType, payload};
use crate::feedback::{Feedback, Rating, Scale};
use crate::principal::Principal;
use crate::proposal::{
    Proposal, ProposalId, ProposalStatus, Review, ReviewDecision, VersionChanges,
};
use crate::session::{
    FeedbackId, Interaction, InteractionId, InteractionStatus, Session, SessionId, SessionStatus,
    TokenUsage,
};

/// An active agent with version 1 behind `prod`.
pub fn agent(agent_id: &AgentId) -> Agent {
    Agent {
        agent_id: agent_id.clone(),
        name: "sample".into(),
        domain: "general".into(),
        description: String::new(),
        status: AgentStatus::Active,
        created_at: 1_790_000_000_000,
        updated_at: 1_790_000_000_000,
        latest_version: 1,
        aliases: vec![Alias::following(PROD_ALIAS, 1, 1_790_000_000_000)],
    }
}

pub fn version(agent_id: &AgentId, version: u32, instructions: &str) -> AgentVersion {
    AgentVersion {
        agent_id: agent_id.clone(),
        version,
        instructions: instructions.to_owned(),
        model: "sample-model".into(),
        parameters: ModelParameters::default(),
        capabilities: Vec::new(),
        knowledge_sources: Vec::new(),
        created_at: 1_790_000_000_000,
        created_by: "user".into(),
        parents: Vec::new(),
        generation: 0,
        change_summary: "created".into(),
        origin: None,
    }
}

pub fn session(agent_id: &AgentId) -> Session {
    Session {
        session_id: SessionId::generate(),
        agent_id: agent_id.clone(),
        alias: PROD_ALIAS.into(),
        version: 1,
        user_id: "anonymous".into(),
        context: serde_json::json!({}),
        status: SessionStatus::Active,
        summary: None,
        created_at: 1_790_000_000_000,
        ended_at: None,
    }
}

/// A completed turn of version `version` that used 30 tokens in 420 ms.
pub fn interaction(agent_id: &AgentId, version: u32) -> Interaction {
    Interaction {
        invoked_by: None,
        interaction_id: InteractionId::generate(),
        agent_id: agent_id.clone(),
        version,
        session_id: None,
        parent_interaction_id: None,
        input: "hello".into(),
        output: Some("hi".into()),
        model: "sample-model".into(),
        usage: TokenUsage {
            prompt_tokens: 24,
            completion_tokens: 6,
        },
        cost_usd: None,
        latency_ms: 420,
        tool_calls: Vec::new(),
        status: InteractionStatus::Completed,
        error: None,
        created_at: 1_790_000_000_000,
    }
}

/// Feedback on version `version` with ratings on the 1-5 scale.
pub fn feedback(agent_id: &AgentId, version: u32, ratings: &[(&str, f64)]) -> Feedback {
    let scale = Scale::DEFAULT;
    Feedback {
        submitted_by: None,
        feedback_id: FeedbackId::generate(),
        agent_id: agent_id.clone(),
        version,
        session_id: None,
        interaction_id: None,
        ratings: ratings
            .iter()
            .map(|(metric, value)| Rating {
                metric: (*metric).to_owned(),
                value: *value,
                scale_min: scale.min,
                scale_max: scale.max,
                normalized: scale.normalize(*value),
            })
            .collect(),
        comments: None,
        categories: Vec::new(),
        user_id: "anonymous".into(),
        created_at: 1_790_000_000_000,
    }
}

/// A running canary of version 2 against version 1 on `prod`, started at `now`.
pub fn canary(agent_id: &AgentId, now: i64) -> Canary {
    Canary {
        history: Vec::new(),
        canary_id: CanaryId::generate(),
        agent_id: agent_id.clone(),
        alias: PROD_ALIAS.into(),
        baseline: 1,
        candidate: 2,
        policy: CanaryPolicy::default(),
        status: CanaryStatus::Running,
        step: 0,
        started_at: now,
        step_started_at: now,
        updated_at: now,
        hard_limit_breaches: 0,
        last_decision: None,
        promoted_at: None,
        baseline_score: None,
        finished_at: None,
        started_by: Principal::named("alice"),
        revision: 0,
    }
}

/// `prod` moved from version 1 to version 2.
pub fn deployment(agent_id: &AgentId, now: i64) -> Deployment {
    Deployment {
        deployment_id: DeploymentId::generate(),
        agent_id: agent_id.clone(),
        alias: PROD_ALIAS.into(),
        kind: DeploymentKind::Deploy,
        from: vec![AliasRoute {
            version: 1,
            weight: 100,
        }],
        to: vec![AliasRoute {
            version: 2,
            weight: 100,
        }],
        actor: Principal::named("alice"),
        reason: "better".into(),
        canary_id: None,
        analysis: None,
        created_at: now,
    }
}

/// A pending proposal by `alice` to change version 1's instructions.
pub fn proposal(agent_id: &AgentId, now: i64) -> Proposal {
    Proposal {
        proposal_id: ProposalId::generate(),
        agent_id: agent_id.clone(),
        base_version: 1,
        changes: VersionChanges {
            instructions: Some("answer in one sentence".into()),
            ..VersionChanges::default()
        },
        rationale: "users want shorter answers".into(),
        proposer: Principal::named("alice"),
        status: ProposalStatus::Pending,
        required_approvals: 2,
        rollout: crate::proposal::Rollout::Canary,
        reviews: Vec::new(),
        created_at: now,
        expires_at: now + 7 * 24 * 3_600_000,
        updated_at: now,
        version: None,
        alias: crate::agent::PROD_ALIAS.into(),
        source: None,
        revision: 0,
    }
}

/// A reflection candidate of a run.
pub fn candidate(evolution_id: &crate::evolution::EvolutionId) -> crate::evolution::Candidate {
    use crate::evolution::{Candidate, CandidateId, Components, MinibatchScores, Operator};
    let components = Components {
        instructions: "Answer with the label only.".into(),
        capability_descriptions: Vec::new(),
    };
    Candidate {
        candidate_id: CandidateId::generate(),
        evolution_id: evolution_id.clone(),
        iteration: 1,
        parents: vec![CandidateId::generate()],
        operator: Operator::Reflection,
        hash: components.hash("sample-model"),
        components,
        minibatch: Some(MinibatchScores {
            case_ids: vec!["case_1".into()],
            parent: vec![0.0],
            child: vec![1.0],
        }),
        val_scores: vec![1.0, 0.5],
        val_mean: Some(0.75),
        accepted: true,
        rationale: "named the labels".into(),
        created_at: 1_790_000_000_000,
    }
}

/// A valid event of `event_type` about `agent_id`.
pub fn event(event_type: EventType, agent_id: &AgentId) -> DomainEvent {
    let time = 1_790_000_000_000;
    match event_type {
        EventType::AgentCreated => DomainEvent::new(
            agent_id,
            time,
            payload::AgentCreated {
                agent: agent(agent_id),
                version: version(agent_id, 1, "be brief"),
            },
        ),
        EventType::AgentVersionCreated => DomainEvent::new(
            agent_id,
            time,
            payload::AgentVersionCreated {
                version: version(agent_id, 2, "be briefer"),
                aliases: agent(agent_id).aliases,
            },
        ),
        EventType::AgentDeployed => DomainEvent::new(
            agent_id,
            time,
            payload::AgentDeployed {
                agent: agent(agent_id),
                deployment: deployment(agent_id, time),
            },
        ),
        EventType::AgentArchived => DomainEvent::new(
            agent_id,
            time,
            payload::AgentArchived {
                agent: agent(agent_id),
            },
        ),
        EventType::SessionStarted => DomainEvent::new(
            agent_id,
            time,
            payload::SessionStarted {
                session: session(agent_id),
            },
        ),
        EventType::SessionEnded => DomainEvent::new(
            agent_id,
            time,
            payload::SessionEnded {
                session: session(agent_id),
            },
        ),
        EventType::InteractionCompleted => DomainEvent::new(
            agent_id,
            time,
            payload::InteractionCompleted {
                interaction: interaction(agent_id, 1),
            },
        ),
        EventType::InteractionFailed => {
            let mut failed = interaction(agent_id, 1);
            failed.status = InteractionStatus::Failed;
            failed.output = None;
            failed.error = Some("the model timed out".into());
            DomainEvent::new(
                agent_id,
                time,
                payload::InteractionFailed {
                    interaction: failed,
                },
            )
        }
        EventType::FeedbackSubmitted => DomainEvent::new(
            agent_id,
            time,
            payload::FeedbackSubmitted {
                feedback: feedback(agent_id, 1, &[("helpfulness", 4.0)]),
            },
        ),
        EventType::CanaryStarted => DomainEvent::new(
            agent_id,
            time,
            payload::CanaryStarted {
                canary: canary(agent_id, time),
            },
        ),
        EventType::CanaryStepAdvanced => DomainEvent::new(
            agent_id,
            time,
            payload::CanaryStepAdvanced {
                canary: canary(agent_id, time),
            },
        ),
        EventType::CanaryPaused => DomainEvent::new(
            agent_id,
            time,
            payload::CanaryPaused {
                canary: canary(agent_id, time),
            },
        ),
        EventType::CanaryPromoted => DomainEvent::new(
            agent_id,
            time,
            payload::CanaryPromoted {
                canary: canary(agent_id, time),
            },
        ),
        EventType::CanaryRolledBack => DomainEvent::new(
            agent_id,
            time,
            payload::CanaryRolledBack {
                canary: canary(agent_id, time),
            },
        ),
        EventType::ImpactNegative => DomainEvent::new(
            agent_id,
            time,
            payload::ImpactNegative {
                canary: canary(agent_id, time),
                change: -0.15,
                rolled_back: true,
            },
        ),
        EventType::ProposalCreated => DomainEvent::new(
            agent_id,
            time,
            payload::ProposalCreated {
                proposal: proposal(agent_id, time),
            },
        ),
        EventType::ProposalReviewed => DomainEvent::new(
            agent_id,
            time,
            payload::ProposalReviewed {
                proposal: proposal(agent_id, time),
                review: Review {
                    reviewer: Principal::named("bob"),
                    decision: ReviewDecision::Approve,
                    comment: "fine".into(),
                    created_at: time,
                },
            },
        ),
        EventType::ProposalApproved => DomainEvent::new(
            agent_id,
            time,
            payload::ProposalApproved {
                proposal: proposal(agent_id, time),
            },
        ),
        EventType::ProposalRejected => DomainEvent::new(
            agent_id,
            time,
            payload::ProposalRejected {
                proposal: proposal(agent_id, time),
            },
        ),
        EventType::ProposalExpired => DomainEvent::new(
            agent_id,
            time,
            payload::ProposalExpired {
                proposal: proposal(agent_id, time),
            },
        ),
        EventType::EvolutionStarted => DomainEvent::new(
            agent_id,
            time,
            payload::EvolutionStarted {
                evolution_id: crate::evolution::EvolutionId::generate(),
                alias: PROD_ALIAS.into(),
                mode: crate::evolution::EvolutionMode::Review,
                seed_version: 1,
                settings: crate::evolution::EvolutionSettings::default(),
                valset_size: 30,
                trainset_size: 70,
                started_by: Principal::named("alice"),
            },
        ),
        EventType::EvolutionGenerationRequested => DomainEvent::new(
            agent_id,
            time,
            payload::EvolutionGenerationRequested {
                evolution_id: crate::evolution::EvolutionId::generate(),
                iteration: 3,
            },
        ),
        EventType::EvolutionGenerationCompleted => DomainEvent::new(
            agent_id,
            time,
            payload::EvolutionGenerationCompleted {
                evolution_id: crate::evolution::EvolutionId::generate(),
                iteration: 3,
                outcome: "accepted".into(),
                detail: "2.0 > 1.0 on the minibatch".into(),
                best_val: 0.8,
                spend: crate::evolution::Spend::default(),
            },
        ),
        EventType::EvolutionCandidateAccepted => DomainEvent::new(
            agent_id,
            time,
            payload::EvolutionCandidateAccepted {
                candidate: candidate(&crate::evolution::EvolutionId::generate()),
            },
        ),
        EventType::EvolutionCandidateRejected => DomainEvent::new(
            agent_id,
            time,
            payload::EvolutionCandidateRejected {
                candidate: candidate(&crate::evolution::EvolutionId::generate()),
            },
        ),
        EventType::EvolutionCandidateSelected => DomainEvent::new(
            agent_id,
            time,
            payload::EvolutionCandidateSelected {
                evolution_id: crate::evolution::EvolutionId::generate(),
                candidate_id: crate::evolution::CandidateId::generate(),
                version: 2,
                proposal_id: Some(ProposalId::generate()),
                canary_id: None,
            },
        ),
        EventType::EvolutionCompleted => DomainEvent::new(
            agent_id,
            time,
            payload::EvolutionCompleted {
                evolution_id: crate::evolution::EvolutionId::generate(),
                stop_reason: "10 iterations without a new best".into(),
                seed_score: Some(0.4),
                best_score: Some(0.7),
                winner: None,
                spend: crate::evolution::Spend::default(),
            },
        ),
        EventType::EvolutionFailed => DomainEvent::new(
            agent_id,
            time,
            payload::EvolutionFailed {
                evolution_id: crate::evolution::EvolutionId::generate(),
                error: "the model refused the request".into(),
                spend: crate::evolution::Spend::default(),
            },
        ),
        EventType::EvolutionCancelled => DomainEvent::new(
            agent_id,
            time,
            payload::EvolutionCancelled {
                evolution_id: crate::evolution::EvolutionId::generate(),
                by: Principal::named("alice"),
                spend: crate::evolution::Spend::default(),
            },
        ),
    }
}
