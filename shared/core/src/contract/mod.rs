//! The store contract: behaviour every `AgentStore` adapter must show, written once and run
//! against each adapter with [`store_contract_tests!`](crate::store_contract_tests).

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use crate::agent::{AgentStatus, Capability, ModelParameters, PROD_ALIAS};
use crate::clock::SystemClock;
use crate::error::ServiceError;
use crate::events::{EventData, EventType, payload};
use crate::feedback::Metric;
use crate::handler::{EventHandler, Handled};
use crate::page::PageRequest;
use crate::ports::{
    AgentStore, DeploymentStore, EvolutionStore, FeedbackStore, Outbox, ProposalStore,
    SessionStore, StoreError,
};
use crate::services::agents::{AgentService, CreateAgent, ListAgents, UpdateAgent};
use crate::services::feedback::{FeedbackService, MetricsQuery, SubmitFeedback};
use crate::services::fitness::FitnessHandler;
use crate::session::{
    Interaction, InteractionId, InteractionStatus, Message, Role, Session, SessionId,
    SessionStatus, TokenUsage, ToolCallRecord,
};

/// A store under test and whatever must live as long as it (a temp dir, a database).
pub struct Fixture {
    pub store: Arc<dyn AgentStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub outbox: Arc<dyn Outbox>,
    pub feedback: Arc<dyn FeedbackStore>,
    pub deployments: Arc<dyn DeploymentStore>,
    pub proposals: Arc<dyn ProposalStore>,
    pub evolutions: Arc<dyn EvolutionStore>,
    _guard: Box<dyn Any + Send>,
}

impl Fixture {
    /// A store adapter implements every store port.
    pub fn new<S>(store: Arc<S>, guard: impl Any + Send) -> Self
    where
        S: AgentStore
            + SessionStore
            + Outbox
            + FeedbackStore
            + DeploymentStore
            + ProposalStore
            + EvolutionStore
            + 'static,
    {
        Self {
            store: store.clone(),
            sessions: store.clone(),
            outbox: store.clone(),
            feedback: store.clone(),
            deployments: store.clone(),
            proposals: store.clone(),
            evolutions: store,
            _guard: Box::new(guard),
        }
    }

    /// Every event in the outbox about `agent`, oldest first.
    async fn events_of(&self, agent: &crate::AgentId) -> Vec<crate::DomainEvent> {
        self.outbox
            .pending(10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| &e.subject == agent)
            .collect()
    }

    pub fn service(&self) -> AgentService {
        AgentService::new(self.store.clone(), Arc::new(SystemClock), "test-model")
    }
}

/// Generates one `#[tokio::test]` per contract case. `$make` is an async expression that yields
/// `Option<Fixture>`; `None` skips the case (for example when a server is not configured).
#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        $crate::store_contract_tests!(@cases $make;
            creates_and_reads_back_every_field,
            update_makes_a_new_version_and_keeps_the_old,
            insert_version_conflict_writes_nothing,
            duplicate_agent_id_conflicts,
            list_filters_combine,
            list_text_filter_is_literal_and_case_insensitive,
            list_pages_cover_everything_once,
            version_pages_cover_everything_once,
            archive_persists_and_hides_from_default_list,
            unknown_ids_are_named,
            concurrent_updates_never_lose_a_version,
            lineage_links_each_version_to_its_parent,
            health_reports_up,
            writes_and_their_events_commit_together,
            the_outbox_drains_oldest_first,
            feedback_metrics_equal_statistics_computed_directly,
            a_redelivered_event_changes_nothing,
            the_applied_event_ledger_forgets_old_entries_only,
            fitness_rebuilt_from_history_equals_what_events_kept,
            a_batch_applies_each_event_once_as_one_by_one_would,
            events_no_statistic_can_take_are_refused_alone,
            bad_feedback_is_refused_field_by_field,
            update_refuses_a_delegation_cycle,
            sessions_start_read_and_end_once,
            a_turn_is_recorded_whole_or_not_at_all,
            an_ended_session_takes_no_turns,
            messages_page_in_order_and_recent_ones_come_last,
            interactions_round_trip_and_list_by_agent,
            spend_sums_a_day_by_agent_and_by_caller,
            deploying_pins_an_alias,
            alias_moves_are_compare_and_set,
            a_canary_splits_an_alias_and_only_one_holds_it,
            rollback_without_a_canary_returns_to_the_previous_version,
            turns_since_counts_the_agents_own_turns_of_new_sessions,
            proposals_round_trip_and_compare_and_set,
            a_proposal_needs_its_approvals_and_not_its_proposers,
            racing_controllers_and_redelivery_move_an_alias_once,
            eval_cases_round_trip_page_and_remove,
            one_running_evolution_per_agent_and_runs_are_compare_and_set,
            the_evaluation_cache_keeps_first_results_and_sums_spend_per_iteration,
            rated_turns_bring_their_ratings_and_comments_newest_first,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(fixture) = $make.await else { return };
                $crate::contract::$case(&fixture).await;
            }
        )*
    };
}

pub mod backup;
mod deployments;
pub use deployments::*;
mod evolutions;
pub use evolutions::*;

fn agent(name: &str) -> CreateAgent {
    CreateAgent {
        name: name.into(),
        instructions: format!("You are {name}."),
        ..CreateAgent::default()
    }
}

fn cap(name: &str) -> Capability {
    Capability {
        name: name.into(),
        description: format!("does {name}"),
        parameters: None,
        effectiveness: None,
        delegate_to: None,
    }
}

fn update(agent_id: &crate::AgentId, instructions: &str) -> UpdateAgent {
    UpdateAgent {
        agent_id: agent_id.clone(),
        expected_version: None,
        instructions: Some(instructions.into()),
        model: None,
        parameters: None,
        capabilities: None,
        knowledge_sources: None,
        change_summary: None,
        created_by: None,
    }
}

pub async fn creates_and_reads_back_every_field(f: &Fixture) {
    let svc = f.service();
    let helper = svc.create(agent("helper")).await.unwrap();
    let mut search = cap("search");
    search.parameters = Some(serde_json::json!({
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"]
    }));
    search.effectiveness = Some(0.75);
    let mut delegate = cap("ask_helper");
    delegate.delegate_to = Some(helper.agent.agent_id.clone());
    let created = svc
        .create(CreateAgent {
            name: "  Support Bot ".into(),
            domain: Some("support".into()),
            description: Some("Answers questions. ✓ unicode".into()),
            instructions: "Be brief.\nBe kind.".into(),
            model: Some("gpt-4o-mini".into()),
            parameters: Some(ModelParameters {
                temperature: Some(0.25),
                top_p: Some(0.9),
                max_tokens: Some(512),
            }),
            capabilities: vec![search, delegate],
            knowledge_sources: vec!["s3://kb/faq.md".into()],
            created_by: Some("alice".into()),
        })
        .await
        .unwrap();
    assert_eq!(created.agent.name, "Support Bot", "names are trimmed");
    assert_eq!(created.version.version, 1);
    assert_eq!(created.agent.latest_version, 1);
    let prod = created.agent.alias(PROD_ALIAS).expect("prod alias exists");
    assert_eq!(prod.routes.len(), 1);
    assert_eq!((prod.routes[0].version, prod.routes[0].weight), (1, 100));

    let read = svc.get(&created.agent.agent_id, None).await.unwrap();
    assert_eq!(read, created, "what is read back equals what was written");
    let v1 = svc.get(&created.agent.agent_id, Some(1)).await.unwrap();
    assert_eq!(v1.version, created.version);
}

pub async fn update_makes_a_new_version_and_keeps_the_old(f: &Fixture) {
    let svc = f.service();
    let created = svc.create(agent("writer")).await.unwrap();
    let id = created.agent.agent_id.clone();
    let v2 = svc.update(update(&id, "Write poems.")).await.unwrap();
    assert_eq!(v2.version.version, 2);
    assert_eq!(v2.version.parents, vec![created.version.reference()]);
    assert_eq!(v2.version.change_summary, "changed instructions");
    assert_eq!(v2.agent.alias(PROD_ALIAS).unwrap().routes[0].version, 2);

    let mut third = update(&id, "Write haiku.");
    third.change_summary = Some("shorter poems".into());
    third.expected_version = Some(2);
    let v3 = svc.update(third).await.unwrap();
    assert_eq!(v3.version.change_summary, "shorter poems");

    let old = svc.get(&id, Some(1)).await.unwrap();
    assert_eq!(old.version, created.version, "version 1 is never edited");
    let latest = svc.get(&id, None).await.unwrap();
    assert_eq!(latest.version.version, 3);
    assert_eq!(latest.version.instructions, "Write haiku.");
    assert_eq!(latest.agent.alias(PROD_ALIAS).unwrap().routes[0].version, 3);

    let stale = UpdateAgent {
        expected_version: Some(2),
        ..update(&id, "Write limericks.")
    };
    let err = svc.update(stale).await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::Conflict(m) if m.contains("expected_version is 2")),
        "{err}"
    );
    let same = svc.update(update(&id, "Write haiku.")).await.unwrap_err();
    assert!(
        matches!(&same, ServiceError::Conflict(m) if m.contains("changes nothing")),
        "{same}"
    );
    assert_eq!(svc.get(&id, None).await.unwrap().version.version, 3);
}

pub async fn insert_version_conflict_writes_nothing(f: &Fixture) {
    let svc = f.service();
    let created = svc.create(agent("racer")).await.unwrap();
    let v2 = svc
        .update(update(&created.agent.agent_id, "first"))
        .await
        .unwrap();
    let mut rival = v2.clone();
    rival.version.instructions = "second".into();
    rival.agent.name = "renamed by a loser".into();
    let err = f
        .store
        .insert_version(&rival.agent, &rival.version, &v2.agent.aliases, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let stored = svc.get(&created.agent.agent_id, None).await.unwrap();
    assert_eq!(stored.version.instructions, "first");
    assert_eq!(stored.agent.name, "racer");
    assert_eq!(stored.agent.latest_version, 2);

    let mut gap = v2.clone();
    gap.version.version = 4;
    gap.agent.latest_version = 4;
    let err = f
        .store
        .insert_version(&gap.agent, &gap.version, &v2.agent.aliases, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(
        f.store
            .get_version(&created.agent.agent_id, 4)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn duplicate_agent_id_conflicts(f: &Fixture) {
    let svc = f.service();
    let created = svc.create(agent("original")).await.unwrap();
    let mut copy = created.clone();
    copy.agent.name = "impostor".into();
    let err = f
        .store
        .insert_agent(&copy.agent, &copy.version, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let stored = svc.get(&created.agent.agent_id, None).await.unwrap();
    assert_eq!(stored.agent.name, "original");
}

/// A domain unique to one test run, so stores shared between tests do not mix results.
fn unique_domain(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn list_filters_combine(f: &Fixture) {
    let svc = f.service();
    let domain = unique_domain("filters");
    let other = unique_domain("other");
    let mk = |name: &str, d: &str, caps: &[&str], description: &str| CreateAgent {
        domain: Some(d.to_owned()),
        description: Some(description.to_owned()),
        capabilities: caps.iter().map(|c| cap(c)).collect(),
        ..agent(name)
    };
    let billing = svc
        .create(mk(
            "Billing",
            &domain,
            &["refund", "invoice"],
            "money things",
        ))
        .await
        .unwrap();
    let shipping = svc
        .create(mk(
            "Shipping",
            &domain,
            &["track"],
            "parcels and MONEY back",
        ))
        .await
        .unwrap();
    let _elsewhere = svc
        .create(mk("Billing elsewhere", &other, &["refund"], ""))
        .await
        .unwrap();

    let ids = |page: crate::Page<crate::Agent>| {
        page.items
            .into_iter()
            .map(|a| a.agent_id)
            .collect::<Vec<_>>()
    };
    let in_domain = ListAgents {
        domain: Some(domain.clone()),
        ..ListAgents::default()
    };
    assert_eq!(
        ids(svc.list(in_domain.clone()).await.unwrap()),
        vec![
            billing.agent.agent_id.clone(),
            shipping.agent.agent_id.clone()
        ]
    );
    let refunds = ListAgents {
        capability: Some("refund".into()),
        ..in_domain.clone()
    };
    assert_eq!(
        ids(svc.list(refunds).await.unwrap()),
        vec![billing.agent.agent_id.clone()]
    );
    let money = ListAgents {
        text: Some("money".into()),
        ..in_domain.clone()
    };
    assert_eq!(
        ids(svc.list(money).await.unwrap()).len(),
        2,
        "text matches the description case-insensitively"
    );
    let by_name = ListAgents {
        text: Some("SHIP".into()),
        ..in_domain.clone()
    };
    assert_eq!(
        ids(svc.list(by_name).await.unwrap()),
        vec![shipping.agent.agent_id.clone()]
    );

    // The capability filter looks at the latest version only.
    let mut change = update(&billing.agent.agent_id, "no more refunds");
    change.capabilities = Some(vec![cap("invoice")]);
    svc.update(change).await.unwrap();
    let refunds = ListAgents {
        capability: Some("refund".into()),
        ..in_domain.clone()
    };
    assert!(ids(svc.list(refunds).await.unwrap()).is_empty());

    let bad = ListAgents {
        status: Some("deleted".into()),
        limit: Some(0),
        ..ListAgents::default()
    };
    match svc.list(bad).await.unwrap_err() {
        ServiceError::Invalid(errors) => {
            let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, ["status", "limit"]);
        }
        other => panic!("expected invalid input, got {other:?}"),
    }
}

pub async fn list_text_filter_is_literal_and_case_insensitive(f: &Fixture) {
    let svc = f.service();
    let domain = unique_domain("literal");
    let mk = |name: &str| CreateAgent {
        domain: Some(domain.clone()),
        ..agent(name)
    };
    let percent = svc.create(mk("100% Uptime")).await.unwrap();
    svc.create(mk("1000 Uptime")).await.unwrap();
    let under = svc.create(mk("snake_case")).await.unwrap();
    svc.create(mk("snakeXcase")).await.unwrap();
    let find = |text: &str| ListAgents {
        domain: Some(domain.clone()),
        text: Some(text.into()),
        ..ListAgents::default()
    };
    let got = svc.list(find("0%")).await.unwrap();
    assert_eq!(got.items.len(), 1);
    assert_eq!(got.items[0].agent_id, percent.agent.agent_id);
    let got = svc.list(find("E_C")).await.unwrap();
    assert_eq!(got.items.len(), 1);
    assert_eq!(got.items[0].agent_id, under.agent.agent_id);
}

pub async fn list_pages_cover_everything_once(f: &Fixture) {
    let svc = f.service();
    let domain = unique_domain("pages");
    let mut created = Vec::new();
    for i in 0..7 {
        let a = svc
            .create(CreateAgent {
                domain: Some(domain.clone()),
                ..agent(&format!("paged {i}"))
            })
            .await
            .unwrap();
        created.push(a.agent.agent_id);
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = svc
            .list(ListAgents {
                domain: Some(domain.clone()),
                cursor: cursor.clone(),
                limit: Some(3),
                ..ListAgents::default()
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|a| a.agent_id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every agent once, in creation order");
}

pub async fn version_pages_cover_everything_once(f: &Fixture) {
    let svc = f.service();
    let id = svc.create(agent("versioned")).await.unwrap().agent.agent_id;
    for i in 2..=5 {
        svc.update(update(&id, &format!("rev {i}"))).await.unwrap();
    }
    let first = svc.list_versions(&id, None, Some(2)).await.unwrap();
    assert_eq!(
        first.items.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );
    let second = svc
        .list_versions(&id, first.next_cursor.as_deref(), Some(2))
        .await
        .unwrap();
    assert_eq!(
        second.items.iter().map(|v| v.version).collect::<Vec<_>>(),
        [3, 4]
    );
    let last = svc
        .list_versions(&id, second.next_cursor.as_deref(), Some(2))
        .await
        .unwrap();
    assert_eq!(
        last.items.iter().map(|v| v.version).collect::<Vec<_>>(),
        [5]
    );
    assert!(last.next_cursor.is_none());
    assert_eq!(last.items[0].instructions, "rev 5");
}

pub async fn archive_persists_and_hides_from_default_list(f: &Fixture) {
    let svc = f.service();
    let domain = unique_domain("archive");
    let a = svc
        .create(CreateAgent {
            domain: Some(domain.clone()),
            ..agent("retiring")
        })
        .await
        .unwrap();
    let id = a.agent.agent_id.clone();
    let archived = svc.archive(&id).await.unwrap();
    assert_eq!(archived.status, AgentStatus::Archived);
    assert_eq!(
        svc.get(&id, None).await.unwrap().agent.status,
        AgentStatus::Archived
    );
    let again = svc.archive(&id).await.unwrap();
    assert_eq!(
        again.updated_at, archived.updated_at,
        "archiving twice is a no-op"
    );

    let list = |status: Option<&str>| ListAgents {
        domain: Some(domain.clone()),
        status: status.map(str::to_owned),
        ..ListAgents::default()
    };
    assert!(svc.list(list(None)).await.unwrap().items.is_empty());
    assert_eq!(
        svc.list(list(Some("archived"))).await.unwrap().items.len(),
        1
    );
    assert_eq!(svc.list(list(Some("all"))).await.unwrap().items.len(), 1);

    // A version prepared before the archive committed does not revive the agent.
    let mut stale = svc.get(&id, None).await.unwrap();
    stale.agent.status = AgentStatus::Active;
    stale.agent.latest_version = 2;
    stale.version.version = 2;
    let err = f
        .store
        .insert_version(&stale.agent, &stale.version, &stale.agent.aliases, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        svc.get(&id, None).await.unwrap().agent.status,
        AgentStatus::Archived
    );

    let err = svc.update(update(&id, "revive")).await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::Conflict(m) if m.contains("archived")),
        "{err}"
    );
    let mut delegating = agent("delegator");
    let mut c = cap("ask");
    c.delegate_to = Some(id.clone());
    delegating.capabilities = vec![c];
    let err = svc.create(delegating).await.unwrap_err().to_string();
    assert!(err.contains("capabilities[0].delegate_to"), "{err}");
}

pub async fn unknown_ids_are_named(f: &Fixture) {
    let svc = f.service();
    let ghost = crate::AgentId::parse("agent_id", "agt_does_not_exist").unwrap();
    let err = svc.get(&ghost, None).await.unwrap_err().to_string();
    assert_eq!(err, "agent 'agt_does_not_exist' not found");
    let err = svc.archive(&ghost).await.unwrap_err().to_string();
    assert!(err.contains("agt_does_not_exist"), "{err}");
    let real = svc.create(agent("real")).await.unwrap().agent.agent_id;
    let err = svc.get(&real, Some(9)).await.unwrap_err().to_string();
    assert_eq!(err, format!("agent version '{real} v9' not found"));

    let mut c = cap("ask");
    c.delegate_to = Some(ghost.clone());
    let mut input = agent("delegator");
    input.capabilities = vec![c];
    let err = svc.create(input).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid input: capabilities[0].delegate_to: agent 'agt_does_not_exist' not found"
    );
}

pub async fn concurrent_updates_never_lose_a_version(f: &Fixture) {
    let svc = f.service();
    let id = svc.create(agent("contended")).await.unwrap().agent.agent_id;
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let svc = svc.clone();
            let id = id.clone();
            tokio::spawn(async move { svc.update(update(&id, &format!("writer {i}"))).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ServiceError::Conflict(m)) => assert!(m.contains("concurrently"), "{m}"),
            Err(other) => panic!("unexpected error {other}: {other:?}"),
        }
    }
    assert!(ok >= 1);
    let versions = svc.list_versions(&id, None, Some(50)).await.unwrap().items;
    let numbers: Vec<u32> = versions.iter().map(|v| v.version).collect();
    assert_eq!(
        numbers,
        (1..=ok + 1).collect::<Vec<_>>(),
        "no gaps, no lost writes"
    );
    let texts: HashSet<_> = versions[1..]
        .iter()
        .map(|v| v.instructions.clone())
        .collect();
    assert_eq!(
        texts.len(),
        ok as usize,
        "each stored version is a different writer's"
    );
    let latest = svc.get(&id, None).await.unwrap();
    assert_eq!(latest.agent.latest_version, ok + 1);
}

pub async fn lineage_links_each_version_to_its_parent(f: &Fixture) {
    let svc = f.service();
    let id = svc.create(agent("lineal")).await.unwrap().agent.agent_id;
    svc.update(update(&id, "two")).await.unwrap();
    svc.update(update(&id, "three")).await.unwrap();
    let lineage = svc.lineage(&id).await.unwrap();
    assert_eq!(
        lineage
            .versions
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let edges: Vec<(u32, u32)> = lineage
        .edges
        .iter()
        .map(|e| (e.child.version, e.parent.version))
        .collect();
    assert_eq!(edges, [(2, 1), (3, 2)]);
}

pub async fn health_reports_up(f: &Fixture) {
    let health = f.store.health().await;
    assert!(health.up, "{health:?}");
    assert!(
        !health.kind.is_empty() && !health.detail.is_empty(),
        "{health:?}"
    );
}

fn session_for(agent_id: &crate::AgentId) -> Session {
    Session {
        session_id: SessionId::generate(),
        agent_id: agent_id.clone(),
        alias: "prod".into(),
        version: 1,
        user_id: "u1".into(),
        context: serde_json::json!({"channel": "web", "nested": {"n": 1}}),
        status: SessionStatus::Active,
        summary: None,
        created_at: 1_000,
        ended_at: None,
    }
}

fn interaction_for(agent_id: &crate::AgentId, session: Option<&SessionId>) -> Interaction {
    Interaction {
        interaction_id: InteractionId::generate(),
        agent_id: agent_id.clone(),
        version: 1,
        session_id: session.cloned(),
        parent_interaction_id: None,
        input: "hello".into(),
        output: Some("hi there".into()),
        model: "gpt-4o-mini".into(),
        usage: TokenUsage {
            prompt_tokens: 12,
            completion_tokens: 5,
        },
        cost_usd: Some(0.000_004_8),
        latency_ms: 321,
        tool_calls: vec![ToolCallRecord {
            call_id: "call_1".into(),
            name: "ask".into(),
            arguments: r#"{"input":"x"}"#.into(),
            delegate_agent_id: Some(agent_id.clone()),
            delegate_interaction_id: Some(InteractionId::generate()),
            result: "done".into(),
            is_error: false,
        }],
        status: InteractionStatus::Completed,
        error: None,
        created_at: 2_000,
        invoked_by: Some(crate::principal::Principal::named("alice")),
    }
}

fn messages_for(i: &Interaction, first_seq: u32) -> Vec<Message> {
    let session_id = i.session_id.clone().expect("a session turn");
    vec![
        Message {
            session_id: session_id.clone(),
            seq: first_seq,
            role: Role::User,
            content: i.input.clone(),
            interaction_id: i.interaction_id.clone(),
            created_at: i.created_at,
        },
        Message {
            session_id,
            seq: first_seq + 1,
            role: Role::Assistant,
            content: i.output.clone().unwrap_or_default(),
            interaction_id: i.interaction_id.clone(),
            created_at: i.created_at + 1,
        },
    ]
}

pub async fn sessions_start_read_and_end_once(f: &Fixture) {
    let agent = f.service().create(agent("talker")).await.unwrap().agent;
    let session = session_for(&agent.agent_id);
    f.sessions.insert_session(&session, &[]).await.unwrap();
    assert_eq!(
        f.sessions.get_session(&session.session_id).await.unwrap(),
        Some(session.clone())
    );
    let err = f.sessions.insert_session(&session, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    f.sessions
        .end_session(&session.session_id, Some("resolved"), 5_000, &[])
        .await
        .unwrap();
    let ended = f
        .sessions
        .get_session(&session.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.status, SessionStatus::Ended);
    assert_eq!(ended.summary.as_deref(), Some("resolved"));
    assert_eq!(ended.ended_at, Some(5_000));
    let again = f
        .sessions
        .end_session(&session.session_id, None, 6_000, &[])
        .await
        .unwrap_err();
    assert!(matches!(again, StoreError::Conflict(_)), "{again:?}");
    assert!(
        f.sessions
            .get_session(&SessionId::generate())
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn a_turn_is_recorded_whole_or_not_at_all(f: &Fixture) {
    let agent = f.service().create(agent("atomic")).await.unwrap().agent;
    let session = session_for(&agent.agent_id);
    f.sessions.insert_session(&session, &[]).await.unwrap();
    let first = interaction_for(&agent.agent_id, Some(&session.session_id));
    f.sessions
        .record_turn(&first, &messages_for(&first, 1), &[])
        .await
        .unwrap();
    // A second turn that reuses message number 2 loses the race: nothing of it is written.
    let loser = interaction_for(&agent.agent_id, Some(&session.session_id));
    let err = f
        .sessions
        .record_turn(&loser, &messages_for(&loser, 2), &[turn_event(&loser)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(
        f.sessions
            .get_interaction(&loser.interaction_id)
            .await
            .unwrap()
            .is_none(),
        "the interaction of a failed turn write is rolled back"
    );
    assert!(
        f.events_of(&agent.agent_id)
            .await
            .iter()
            .all(|e| !matches!(&e.data, EventData::InteractionCompleted(p)
                if p.interaction.interaction_id == loser.interaction_id)),
        "and so is its event"
    );
    let messages = f
        .sessions
        .recent_messages(&session.session_id, 10)
        .await
        .unwrap();
    assert_eq!(messages.len(), 2);
}

pub async fn an_ended_session_takes_no_turns(f: &Fixture) {
    let agent = f.service().create(agent("closing")).await.unwrap().agent;
    let session = session_for(&agent.agent_id);
    f.sessions.insert_session(&session, &[]).await.unwrap();
    f.sessions
        .end_session(&session.session_id, None, 2, &[])
        .await
        .unwrap();
    let late = interaction_for(&agent.agent_id, Some(&session.session_id));
    let err = f
        .sessions
        .record_turn(&late, &messages_for(&late, 1), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(
        f.sessions
            .get_interaction(&late.interaction_id)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn messages_page_in_order_and_recent_ones_come_last(f: &Fixture) {
    let agent = f.service().create(agent("chatty")).await.unwrap().agent;
    let session = session_for(&agent.agent_id);
    f.sessions.insert_session(&session, &[]).await.unwrap();
    for turn in 0..3 {
        let mut i = interaction_for(&agent.agent_id, Some(&session.session_id));
        i.input = format!("question {turn}");
        i.output = Some(format!("answer {turn}"));
        f.sessions
            .record_turn(&i, &messages_for(&i, turn * 2 + 1), &[])
            .await
            .unwrap();
    }
    let page = PageRequest::parse(None, Some(4)).unwrap();
    let first = f
        .sessions
        .list_messages(&session.session_id, &page)
        .await
        .unwrap();
    assert_eq!(first.len(), 5, "limit + 1 tells the caller there is more");
    assert_eq!(
        first.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(first[0].content, "question 0");
    assert_eq!(first[1].role, Role::Assistant);
    let recent = f
        .sessions
        .recent_messages(&session.session_id, 2)
        .await
        .unwrap();
    assert_eq!(
        recent
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        ["question 2", "answer 2"]
    );
}

pub async fn interactions_round_trip_and_list_by_agent(f: &Fixture) {
    let svc = f.service();
    let a = svc.create(agent("worker a")).await.unwrap().agent;
    let b = svc.create(agent("worker b")).await.unwrap().agent;
    let mut failed = interaction_for(&a.agent_id, None);
    failed.status = InteractionStatus::Failed;
    failed.output = None;
    failed.error = Some("the model did not answer within 30s".into());
    failed.cost_usd = None;
    let ok = interaction_for(&a.agent_id, None);
    let other = interaction_for(&b.agent_id, None);
    for i in [&failed, &ok, &other] {
        f.sessions.record_turn(i, &[], &[]).await.unwrap();
    }
    assert_eq!(
        f.sessions
            .get_interaction(&failed.interaction_id)
            .await
            .unwrap(),
        Some(failed.clone())
    );
    let listed = f
        .sessions
        .list_interactions(&a.agent_id, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(listed, vec![failed, ok]);
}

pub async fn spend_sums_a_day_by_agent_and_by_caller(f: &Fixture) {
    use crate::principal::Principal;
    use crate::spend::Spender;
    let svc = f.service();
    let a = svc.create(agent("spender a")).await.unwrap().agent;
    let b = svc.create(agent("spender b")).await.unwrap().agent;
    // Callers of this run alone: a store may outlive one run of the suite.
    let run = a.agent_id.to_string();
    let alice = Principal::named(&format!("alice-{run}"));
    let bob = Principal::named(&format!("bob-{run}"));
    let turn = |agent: &crate::AgentId, by: &Principal, at: i64, cost: Option<f64>| {
        let mut i = interaction_for(agent, None);
        i.tool_calls.clear();
        i.created_at = at;
        i.cost_usd = cost;
        i.invoked_by = Some(by.clone());
        i
    };
    let day = 86_400_000;
    for i in [
        turn(&a.agent_id, &alice, day - 1, Some(100.0)), // the day before
        turn(&a.agent_id, &alice, day, Some(0.25)),
        turn(&a.agent_id, &bob, day + 5, Some(0.5)),
        turn(&a.agent_id, &bob, day + 6, None), // no price: nothing
        turn(&b.agent_id, &alice, day + 7, Some(2.0)),
    ] {
        f.sessions.record_turn(&i, &[], &[]).await.unwrap();
    }
    let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-9, "{got} != {want}");
    let nobody = Principal::named(&format!("nobody-{run}"));
    for (spender, since, want) in [
        (Spender::Agent(&a.agent_id), day, 0.75),
        (Spender::Agent(&b.agent_id), day, 2.0),
        (Spender::Caller(&alice), day, 2.25),
        (Spender::Caller(&bob), day, 0.5),
        (Spender::Caller(&nobody), day, 0.0),
        (Spender::Agent(&a.agent_id), 0, 100.75),
    ] {
        let got = f.sessions.spent_since(spender, since).await.unwrap();
        close(got, want);
    }
}

pub async fn update_refuses_a_delegation_cycle(f: &Fixture) {
    let svc = f.service();
    let b = svc.create(agent("b")).await.unwrap().agent.agent_id;
    let mut to_b = cap("ask_b");
    to_b.delegate_to = Some(b.clone());
    let a = svc
        .create(CreateAgent {
            capabilities: vec![to_b],
            ..agent("a")
        })
        .await
        .unwrap()
        .agent
        .agent_id;
    let mut back = update(&b, "b now asks a");
    let mut to_a = cap("ask_a");
    to_a.delegate_to = Some(a.clone());
    back.capabilities = Some(vec![to_a]);
    let err = svc.update(back).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("invalid input: capabilities[0].delegate_to: delegation cycle: {b} -> {a} -> {b}")
    );
    assert_eq!(
        svc.get(&b, None).await.unwrap().version.version,
        1,
        "nothing was written"
    );
}

fn turn_event(i: &Interaction) -> crate::DomainEvent {
    crate::DomainEvent::new(
        &i.agent_id,
        i.created_at,
        payload::InteractionCompleted {
            interaction: i.clone(),
        },
    )
}

pub async fn writes_and_their_events_commit_together(f: &Fixture) {
    let svc = f.service();
    let created = svc.create(agent("eventful")).await.unwrap();
    let id = created.agent.agent_id.clone();
    let types: Vec<EventType> = f
        .events_of(&id)
        .await
        .iter()
        .map(crate::DomainEvent::event_type)
        .collect();
    assert_eq!(
        types,
        [EventType::AgentCreated, EventType::AgentVersionCreated]
    );

    svc.update(update(&id, "v2")).await.unwrap();
    svc.archive(&id).await.unwrap();
    let events = f.events_of(&id).await;
    let types: Vec<EventType> = events.iter().map(crate::DomainEvent::event_type).collect();
    assert_eq!(
        types,
        [
            EventType::AgentCreated,
            EventType::AgentVersionCreated,
            EventType::AgentVersionCreated,
            EventType::AgentArchived
        ]
    );
    let EventData::AgentVersionCreated(second) = &events[2].data else {
        panic!("{:?}", events[2]);
    };
    assert_eq!(second.version.version, 2);
    let EventData::AgentCreated(first) = &events[0].data else {
        panic!("{:?}", events[0]);
    };
    assert_eq!(first.agent.name, "eventful");

    // A write that fails writes none of its events.
    let mut rival = svc.get(&id, None).await.unwrap();
    rival.version.version = 2;
    let doomed = crate::DomainEvent::new(
        &id,
        0,
        payload::AgentVersionCreated {
            version: rival.version.clone(),
            aliases: Vec::new(),
        },
    );
    let err = f
        .store
        .insert_version(
            &rival.agent,
            &rival.version,
            &rival.agent.aliases,
            std::slice::from_ref(&doomed),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(!f.events_of(&id).await.iter().any(|e| e.id == doomed.id));
}

pub async fn the_outbox_drains_oldest_first(f: &Fixture) {
    let svc = f.service();
    let before = f.outbox.backlog().await.unwrap();
    let a = svc.create(agent("first in")).await.unwrap().agent.agent_id;
    let b = svc.create(agent("second in")).await.unwrap().agent.agent_id;
    assert_eq!(f.outbox.backlog().await.unwrap(), before + 4);
    let pending = f.outbox.pending(10_000).await.unwrap();
    let ours: Vec<&crate::DomainEvent> = pending
        .iter()
        .filter(|e| e.subject == a || e.subject == b)
        .collect();
    assert_eq!(ours.len(), 4);
    assert_eq!(ours[0].subject, a, "oldest first");
    assert_eq!(ours[3].subject, b);
    let ids: Vec<String> = ours.iter().map(|e| e.id.clone()).collect();
    f.outbox.mark_published(&ids[..2]).await.unwrap();
    assert_eq!(f.outbox.backlog().await.unwrap(), before + 2);
    assert!(f.events_of(&a).await.is_empty());
    assert_eq!(f.events_of(&b).await.len(), 2);
    f.outbox.mark_published(&ids).await.unwrap();
    assert!(
        f.events_of(&b).await.is_empty(),
        "marking twice is harmless"
    );
}

impl Fixture {
    fn feedback_service(&self) -> FeedbackService {
        FeedbackService::new(
            self.store.clone(),
            self.sessions.clone(),
            self.feedback.clone(),
            Arc::new(SystemClock),
        )
    }

    /// Feeds every pending event about `agent` to the processor, as the relay would.
    async fn process_events_of(&self, agent: &crate::AgentId) -> Vec<Handled> {
        let processor = FitnessHandler::new(self.feedback.clone());
        let mut outcomes = Vec::new();
        for event in self.events_of(agent).await {
            outcomes.push(processor.handle(&event).await.unwrap());
        }
        outcomes
    }
}

fn rating(metric: &str, value: f64) -> SubmitFeedback {
    SubmitFeedback {
        caller: None,
        agent_id: crate::AgentId::parse("agent_id", "placeholder").unwrap(),
        session_id: None,
        interaction_id: None,
        ratings: [(metric.to_owned(), value)].into_iter().collect(),
        scale: None,
        comments: None,
        categories: Vec::new(),
        user_id: None,
    }
}

fn sample_stats(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

pub async fn feedback_metrics_equal_statistics_computed_directly(f: &Fixture) {
    let id = f
        .service()
        .create(agent("rated"))
        .await
        .unwrap()
        .agent
        .agent_id;
    let svc = f.feedback_service();
    let mut normalized = Vec::new();
    for i in 0..50u32 {
        let value = f64::from((i * 7 + 3) % 5 + 1);
        normalized.push((value - 1.0) / 4.0);
        svc.submit(SubmitFeedback {
            agent_id: id.clone(),
            categories: vec!["tone".into()],
            ..rating("helpfulness", value)
        })
        .await
        .unwrap();
    }
    let outcomes = f.process_events_of(&id).await;
    assert_eq!(
        outcomes.iter().filter(|o| **o == Handled::Applied).count(),
        50
    );
    let (mean, var) = sample_stats(&normalized);
    let query = |from: Option<i64>| MetricsQuery {
        agent_id: id.clone(),
        version: Some(1),
        metric: Some("helpfulness".into()),
        from,
        to: None,
    };
    for report in [
        svc.metrics(query(None)).await.unwrap(),
        svc.metrics(query(Some(0))).await.unwrap(),
    ] {
        assert_eq!(report.metrics.len(), 1, "{report:?}");
        let m = &report.metrics[0];
        assert_eq!(m.metric, Metric::rating("helpfulness"));
        assert_eq!(m.count, 50);
        assert!((m.mean - mean).abs() < 1e-9, "{} vs {mean}", m.mean);
        assert!((m.variance - var).abs() < 1e-9, "{} vs {var}", m.variance);
    }
}

pub async fn a_redelivered_event_changes_nothing(f: &Fixture) {
    let id = f
        .service()
        .create(agent("redelivered"))
        .await
        .unwrap()
        .agent
        .agent_id;
    let svc = f.feedback_service();
    for v in [1.0, 5.0, 4.0] {
        svc.submit(SubmitFeedback {
            agent_id: id.clone(),
            ..rating("accuracy", v)
        })
        .await
        .unwrap();
    }
    f.process_events_of(&id).await;
    let q = || MetricsQuery {
        agent_id: id.clone(),
        version: None,
        metric: Some("accuracy".into()),
        from: None,
        to: None,
    };
    let once = svc.metrics(q()).await.unwrap();
    let again = f.process_events_of(&id).await;
    assert!(again.iter().all(|o| *o != Handled::Applied), "{again:?}");
    assert_eq!(svc.metrics(q()).await.unwrap(), once);
    assert_eq!(once.metrics[0].count, 3);
}

pub async fn fitness_rebuilt_from_history_equals_what_events_kept(f: &Fixture) {
    use crate::services::fitness::audit_fitness;
    let id = f
        .service()
        .create(agent("audited"))
        .await
        .unwrap()
        .agent
        .agent_id;
    // Turns, one failed, and feedback on two metrics.
    for (n, failed) in [(1, false), (2, true), (3, false), (4, false)] {
        let mut turn = interaction_for(&id, None);
        turn.tool_calls.clear();
        turn.latency_ms = 100 * n;
        turn.usage.prompt_tokens = 10 * n;
        if failed {
            turn.status = InteractionStatus::Failed;
            turn.output = None;
            turn.error = Some("timed out".into());
        }
        let event = crate::events::DomainEvent::new(
            &id,
            turn.created_at,
            if failed {
                EventData::InteractionFailed(payload::InteractionFailed {
                    interaction: turn.clone(),
                })
            } else {
                EventData::InteractionCompleted(payload::InteractionCompleted {
                    interaction: turn.clone(),
                })
            },
        );
        f.sessions.record_turn(&turn, &[], &[event]).await.unwrap();
    }
    let svc = f.feedback_service();
    for (metric, v) in [
        ("accuracy", 5.0),
        ("accuracy", 2.0),
        ("tone", 4.0),
        ("accuracy", 3.0),
    ] {
        svc.submit(SubmitFeedback {
            agent_id: id.clone(),
            ..rating(metric, v)
        })
        .await
        .unwrap();
    }
    // The events arrive out of order, some twice.
    let mut events = f.events_of(&id).await;
    events.reverse();
    let again: Vec<_> = events.iter().step_by(2).cloned().collect();
    events.extend(again);
    events.swap(0, 3);
    let processor = FitnessHandler::new(f.feedback.clone());
    for event in &events {
        processor.handle(event).await.unwrap();
    }
    let audit = audit_fitness(f.store.as_ref(), f.sessions.as_ref(), f.feedback.as_ref())
        .await
        .unwrap();
    let ours: Vec<_> = audit
        .differences
        .iter()
        .filter(|d| d.agent_id == id)
        .collect();
    assert!(ours.is_empty(), "{ours:#?}");
    assert!(audit.statistics >= 5, "{audit:?}");

    // A statistic the history does not explain is reported, naming where.
    f.feedback
        .apply_once(
            &format!("stray-{id}"),
            &[crate::feedback::FitnessUpdate {
                agent_id: id.clone(),
                version: 1,
                metric: Metric::TurnLatencyMs,
                value: 1_000_000.0,
            }],
        )
        .await
        .unwrap();
    let audit = audit_fitness(f.store.as_ref(), f.sessions.as_ref(), f.feedback.as_ref())
        .await
        .unwrap();
    let ours: Vec<_> = audit
        .differences
        .iter()
        .filter(|d| d.agent_id == id)
        .collect();
    assert_eq!(ours.len(), 1, "{ours:#?}");
    assert_eq!(ours[0].metric, Metric::TurnLatencyMs);
    assert_eq!(ours[0].kept.as_ref().unwrap().count, 5);
    assert_eq!(ours[0].rebuilt.as_ref().unwrap().count, 4);
    assert!(
        ours[0]
            .to_string()
            .contains("interaction.latency_ms: kept n=5"),
        "{}",
        ours[0]
    );
}

pub async fn the_applied_event_ledger_forgets_old_entries_only(f: &Fixture) {
    let id = f
        .service()
        .create(agent("ledger"))
        .await
        .unwrap()
        .agent
        .agent_id;
    let svc = f.feedback_service();
    for v in [2.0, 4.0] {
        svc.submit(SubmitFeedback {
            agent_id: id.clone(),
            ..rating("accuracy", v)
        })
        .await
        .unwrap();
    }
    let applied = |outcomes: Vec<Handled>| {
        outcomes
            .into_iter()
            .filter(|h| *h == Handled::Applied)
            .count()
    };
    assert_eq!(applied(f.process_events_of(&id).await), 2);
    // Nothing was recorded before the epoch's first second: nothing is forgotten.
    assert_eq!(f.feedback.forget_applied(1_000, 1_000).await.unwrap(), 0);
    assert_eq!(applied(f.process_events_of(&id).await), 0);
    // Everything recorded before a minute from now: ours among them, oldest first, in batches.
    let later = crate::clock::Clock::now_ms(&SystemClock) + 60_000;
    let first = f.feedback.forget_applied(later, 1).await.unwrap();
    assert_eq!(first, 1, "at most the limit");
    let rest = f.feedback.forget_applied(later, 1_000_000).await.unwrap();
    assert!(rest >= 1, "{rest}");
    assert_eq!(
        f.feedback.forget_applied(later, 1_000_000).await.unwrap(),
        0
    );
    // A forgotten event is applied again if it comes: why retention must outlast redelivery.
    assert_eq!(applied(f.process_events_of(&id).await), 2);
}

pub async fn a_batch_applies_each_event_once_as_one_by_one_would(f: &Fixture) {
    let svc = f.feedback_service();
    let mut agents = Vec::new();
    for name in ["batched", "one-by-one"] {
        let id = f
            .service()
            .create(agent(name))
            .await
            .unwrap()
            .agent
            .agent_id;
        for v in [1.0, 5.0, 4.0, 2.0] {
            svc.submit(SubmitFeedback {
                agent_id: id.clone(),
                ..rating("accuracy", v)
            })
            .await
            .unwrap();
        }
        agents.push(id);
    }
    let processor = FitnessHandler::new(f.feedback.clone());
    // The first agent's events as one batch, its first event twice and, before that, once
    // on its own (a redelivery that overlaps a batch).
    let events = f.events_of(&agents[0]).await;
    let ratings: Vec<&crate::DomainEvent> = events
        .iter()
        .filter(|e| e.event_type() == crate::EventType::FeedbackSubmitted)
        .collect();
    assert_eq!(ratings.len(), 4);
    assert_eq!(
        processor.handle(ratings[0]).await.unwrap(),
        Handled::Applied
    );
    let mut batch: Vec<&crate::DomainEvent> = events.iter().collect();
    batch.push(ratings[1]);
    let outcomes: Vec<Handled> = processor
        .handle_batch(&batch)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // Creating the agent made events without statistics; the ratings count once each.
    let applied = outcomes.iter().filter(|o| **o == Handled::Applied).count();
    let duplicates = outcomes
        .iter()
        .filter(|o| **o == Handled::Duplicate)
        .count();
    assert_eq!((applied, duplicates), (3, 2), "{outcomes:?}");
    f.process_events_of(&agents[1]).await;
    let stats = |id: &crate::AgentId| MetricsQuery {
        agent_id: id.clone(),
        version: None,
        metric: Some("accuracy".into()),
        from: None,
        to: None,
    };
    let batched = svc.metrics(stats(&agents[0])).await.unwrap().metrics;
    let single = svc.metrics(stats(&agents[1])).await.unwrap().metrics;
    assert_eq!(batched.len(), 1);
    assert_eq!(batched[0].count, 4);
    // A store may fold a batch per statistic and merge it (pairwise), which rounds
    // differently from one value at a time in the last bits.
    assert_eq!(batched[0].count, single[0].count);
    assert!(
        (batched[0].mean - single[0].mean).abs() < 1e-9,
        "{batched:?} {single:?}"
    );
    assert!(
        (batched[0].variance - single[0].variance).abs() < 1e-9,
        "{batched:?} {single:?}"
    );
}

/// A crafted `feedback.submitted` whose value is not a rating (huge, not a number, below 0) is
/// refused as unusable (it goes to the dead-letter topic) instead of turning the statistics into
/// NaN, which the store would then refuse forever; the events around it in its batch apply.
pub async fn events_no_statistic_can_take_are_refused_alone(f: &Fixture) {
    let svc = f.feedback_service();
    let id = f
        .service()
        .create(agent("crafted"))
        .await
        .unwrap()
        .agent
        .agent_id;
    for v in [2.0, 4.0] {
        svc.submit(SubmitFeedback {
            agent_id: id.clone(),
            ..rating("accuracy", v)
        })
        .await
        .unwrap();
    }
    let events = f.events_of(&id).await;
    let ratings: Vec<&crate::DomainEvent> = events
        .iter()
        .filter(|e| e.event_type() == crate::EventType::FeedbackSubmitted)
        .collect();
    let crafted: Vec<crate::DomainEvent> = [1.7e308, f64::NAN, -0.5]
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let mut event = ratings[0].clone();
            event.id = format!("{}-crafted-{i}", event.id);
            if let EventData::FeedbackSubmitted(p) = &mut event.data {
                p.feedback.ratings[0].normalized = value;
            }
            event
        })
        .collect();
    let processor = FitnessHandler::new(f.feedback.clone());
    assert!(matches!(
        processor.handle(&crafted[0]).await,
        Err(crate::handler::HandleError::Poison { .. })
    ));
    let batch = [ratings[0], &crafted[1], &crafted[2], ratings[1]];
    let outcomes = processor.handle_batch(&batch).await;
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    assert!(matches!(outcomes[0], Ok(Handled::Applied)), "{outcomes:?}");
    for refused in &outcomes[1..3] {
        assert!(
            matches!(refused, Err(crate::handler::HandleError::Poison { reason, .. })
                if reason.contains("not a number between 0 and 1")),
            "{outcomes:?}"
        );
    }
    assert!(matches!(outcomes[3], Ok(Handled::Applied)), "{outcomes:?}");
    let stats = svc
        .metrics(MetricsQuery {
            agent_id: id.clone(),
            version: None,
            metric: Some("accuracy".into()),
            from: None,
            to: None,
        })
        .await
        .unwrap()
        .metrics;
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].count, 2, "{stats:?}");
    // 2 and 4 on a 1-5 scale: 0.25 and 0.75.
    assert!((stats[0].mean - 0.5).abs() < 1e-12, "{stats:?}");
}

pub async fn bad_feedback_is_refused_field_by_field(f: &Fixture) {
    let svc = f.feedback_service();
    let id = f
        .service()
        .create(agent("judged"))
        .await
        .unwrap()
        .agent
        .agent_id;
    let other = f
        .service()
        .create(agent("bystander"))
        .await
        .unwrap()
        .agent
        .agent_id;
    let none = SubmitFeedback {
        agent_id: id.clone(),
        ratings: Default::default(),
        ..rating("x", 1.0)
    };
    let err = svc.submit(none).await.unwrap_err().to_string();
    assert!(err.contains("ratings: give at least one rating"), "{err}");
    let outside = SubmitFeedback {
        agent_id: id.clone(),
        ..rating("helpfulness", 7.0)
    };
    let err = svc.submit(outside).await.unwrap_err().to_string();
    assert!(
        err.contains("ratings.helpfulness: 7 is outside the scale 1-5"),
        "{err}"
    );
    let bad_scale = SubmitFeedback {
        agent_id: id.clone(),
        scale: Some("5-1".into()),
        ..rating("helpfulness", 3.0)
    };
    let err = svc.submit(bad_scale).await.unwrap_err().to_string();
    assert!(err.contains("scale: '5-1' is not min-max"), "{err}");
    let unknown = SubmitFeedback {
        agent_id: id.clone(),
        interaction_id: Some(InteractionId::parse("interaction_id", "int_nope").unwrap()),
        ..rating("helpfulness", 3.0)
    };
    let err = svc.submit(unknown).await.unwrap_err().to_string();
    assert_eq!(err, "interaction 'int_nope' not found");
    let foreign = interaction_for(&other, None);
    f.sessions.record_turn(&foreign, &[], &[]).await.unwrap();
    let wrong_agent = SubmitFeedback {
        agent_id: id.clone(),
        interaction_id: Some(foreign.interaction_id.clone()),
        ..rating("helpfulness", 3.0)
    };
    let err = svc.submit(wrong_agent).await.unwrap_err().to_string();
    assert!(err.contains("interaction_id: interaction"), "{err}");
    assert!(
        err.contains(&format!("belongs to agent '{other}'")),
        "{err}"
    );
    let in_range = SubmitFeedback {
        agent_id: id.clone(),
        scale: Some("0-1".into()),
        ..rating("helpfulness", 0.25)
    };
    let stored = svc.submit(in_range).await.unwrap();
    assert!((stored.ratings[0].normalized - 0.25).abs() < 1e-12);
    assert_eq!(stored.version, 1);
}
