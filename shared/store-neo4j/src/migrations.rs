//! Schema migrations: versioned, idempotent (`IF NOT EXISTS` everywhere), recorded in the graph
//! as `(:SchemaMigration {version, name, applied_at})`. Neo4j does not mix schema and data
//! changes in one transaction, so each statement commits on its own and the record follows; a
//! migration interrupted half-way is simply applied again.

use aop_core::StoreError;
use neo4rs::{Row, query};

use crate::{Neo4jStore, Work, column, rows, run};

/// One migration: a name and its statements, Neo4j 5 syntax.
pub struct Migration {
    pub name: &'static str,
    pub statements: &'static [&'static str],
}

/// Every migration, in order; the version of migration `i` is `i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "unique ids and lookup indexes",
        statements: &[
            "CREATE CONSTRAINT schema_migration_version IF NOT EXISTS FOR (n:SchemaMigration) REQUIRE n.version IS UNIQUE",
            "CREATE CONSTRAINT agent_id IF NOT EXISTS FOR (n:Agent) REQUIRE n.agent_id IS UNIQUE",
            "CREATE CONSTRAINT agent_version_key IF NOT EXISTS FOR (n:AgentVersion) REQUIRE n.key IS UNIQUE",
            "CREATE CONSTRAINT capability_key IF NOT EXISTS FOR (n:Capability) REQUIRE n.key IS UNIQUE",
            "CREATE CONSTRAINT session_id IF NOT EXISTS FOR (n:Session) REQUIRE n.session_id IS UNIQUE",
            "CREATE CONSTRAINT message_key IF NOT EXISTS FOR (n:Message) REQUIRE n.key IS UNIQUE",
            "CREATE CONSTRAINT interaction_id IF NOT EXISTS FOR (n:Interaction) REQUIRE n.interaction_id IS UNIQUE",
            "CREATE CONSTRAINT feedback_id IF NOT EXISTS FOR (n:Feedback) REQUIRE n.feedback_id IS UNIQUE",
            "CREATE CONSTRAINT user_id IF NOT EXISTS FOR (n:User) REQUIRE n.user_id IS UNIQUE",
            "CREATE CONSTRAINT fitness_key IF NOT EXISTS FOR (n:Fitness) REQUIRE n.key IS UNIQUE",
            "CREATE CONSTRAINT processed_event_id IF NOT EXISTS FOR (n:ProcessedEvent) REQUIRE n.event_id IS UNIQUE",
            "CREATE CONSTRAINT outbox_event_id IF NOT EXISTS FOR (n:OutboxEvent) REQUIRE n.event_id IS UNIQUE",
            "CREATE CONSTRAINT quarantined_event_id IF NOT EXISTS FOR (n:QuarantinedEvent) REQUIRE n.event_id IS UNIQUE",
            "CREATE CONSTRAINT evolution_id IF NOT EXISTS FOR (n:Evolution) REQUIRE n.evolution_id IS UNIQUE",
            "CREATE INDEX agent_version_agent IF NOT EXISTS FOR (n:AgentVersion) ON (n.agent_id)",
            "CREATE INDEX message_session IF NOT EXISTS FOR (n:Message) ON (n.session_id)",
            "CREATE INDEX interaction_agent IF NOT EXISTS FOR (n:Interaction) ON (n.agent_id)",
            "CREATE INDEX rating_agent IF NOT EXISTS FOR (n:Rating) ON (n.agent_id)",
            "CREATE INDEX fitness_agent IF NOT EXISTS FOR (n:Fitness) ON (n.agent_id)",
            "CREATE INDEX agent_domain IF NOT EXISTS FOR (n:Agent) ON (n.domain)",
        ],
    },
    Migration {
        name: "deployments, canaries, proposals and reviews",
        statements: &[
            "CREATE CONSTRAINT deployment_id IF NOT EXISTS FOR (n:Deployment) REQUIRE n.deployment_id IS UNIQUE",
            "CREATE CONSTRAINT canary_id IF NOT EXISTS FOR (n:Canary) REQUIRE n.canary_id IS UNIQUE",
            "CREATE CONSTRAINT proposal_id IF NOT EXISTS FOR (n:Proposal) REQUIRE n.proposal_id IS UNIQUE",
            "CREATE CONSTRAINT review_key IF NOT EXISTS FOR (n:Review) REQUIRE n.key IS UNIQUE",
            "CREATE INDEX deployment_agent IF NOT EXISTS FOR (n:Deployment) ON (n.agent_id)",
            "CREATE INDEX canary_agent IF NOT EXISTS FOR (n:Canary) ON (n.agent_id)",
            "CREATE INDEX canary_status IF NOT EXISTS FOR (n:Canary) ON (n.status)",
            "CREATE INDEX proposal_agent IF NOT EXISTS FOR (n:Proposal) ON (n.agent_id)",
            "CREATE INDEX proposal_status IF NOT EXISTS FOR (n:Proposal) ON (n.status)",
            "CREATE INDEX session_agent IF NOT EXISTS FOR (n:Session) ON (n.agent_id)",
        ],
    },
    Migration {
        name: "evaluation cases, evolution candidates and the evaluation cache",
        statements: &[
            "CREATE CONSTRAINT eval_case_id IF NOT EXISTS FOR (n:EvalCase) REQUIRE n.case_id IS UNIQUE",
            "CREATE CONSTRAINT candidate_id IF NOT EXISTS FOR (n:Candidate) REQUIRE n.candidate_id IS UNIQUE",
            "CREATE CONSTRAINT evaluation_key IF NOT EXISTS FOR (n:Evaluation) REQUIRE n.key IS UNIQUE",
            "CREATE INDEX eval_case_agent IF NOT EXISTS FOR (n:EvalCase) ON (n.agent_id)",
            "CREATE INDEX evolution_agent IF NOT EXISTS FOR (n:Evolution) ON (n.agent_id)",
            "CREATE INDEX evolution_status IF NOT EXISTS FOR (n:Evolution) ON (n.status)",
            "CREATE INDEX candidate_evolution IF NOT EXISTS FOR (n:Candidate) ON (n.evolution_id)",
            "CREATE INDEX evaluation_evolution IF NOT EXISTS FOR (n:Evaluation) ON (n.evolution_id)",
            "CREATE INDEX feedback_interaction IF NOT EXISTS FOR (n:Feedback) ON (n.interaction_id)",
        ],
    },
    Migration {
        name: "spend by agent and by caller per day",
        statements: &[
            "CREATE INDEX interaction_agent_time IF NOT EXISTS FOR (n:Interaction) ON (n.agent_id, n.created_at)",
            "CREATE INDEX interaction_caller_time IF NOT EXISTS FOR (n:Interaction) ON (n.invoked_by, n.created_at)",
        ],
    },
    Migration {
        name: "the applied-event ledger by age, for its retention",
        statements: &[
            "CREATE INDEX processed_event_time IF NOT EXISTS FOR (n:ProcessedEvent) ON (n.processed_at)",
        ],
    },
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The highest migration recorded in the graph; 0 for an empty database.
///
/// # Errors
/// As any store operation.
pub async fn applied_version(store: &Neo4jStore) -> Result<u32, StoreError> {
    let found = store
        .transact("schema_version", |txn| -> Work<'_, Vec<Row>> {
            let q = query("MATCH (m:SchemaMigration) RETURN coalesce(max(m.version), 0) AS v");
            Box::pin(rows(txn, q))
        })
        .await?;
    found
        .first()
        .map_or(Ok(0), |r| column(r, "v", "schema version"))
}

/// Applies the migrations the graph has not recorded yet. Returns the versions applied.
///
/// # Errors
/// `Permanent` when the graph's schema is newer than this build; otherwise as any store
/// operation.
pub async fn migrate(store: &Neo4jStore) -> Result<Vec<u32>, StoreError> {
    let current = applied_version(store).await?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Permanent {
            message: format!(
                "the graph's schema version {current} is newer than this build supports \
                 ({SCHEMA_VERSION}); upgrade aop"
            ),
            source: None,
        });
    }
    let mut applied = Vec::new();
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as u32 + 1;
        for statement in migration.statements {
            store
                .transact("migrate", |txn| -> Work<'_, ()> {
                    Box::pin(run(txn, query(statement)))
                })
                .await?;
        }
        let now = store.now_ms();
        store
            .transact("migrate", |txn| -> Work<'_, ()> {
                let q = query(
                    "MERGE (m:SchemaMigration {version: $version})
                     ON CREATE SET m.name = $name, m.applied_at = $now",
                )
                .param("version", i64::from(version))
                .param("name", migration.name)
                .param("now", now);
                Box::pin(run(txn, q))
            })
            .await?;
        tracing::info!(version, name = migration.name, "applied graph migration");
        applied.push(version);
    }
    Ok(applied)
}

/// Refuses to serve a graph whose schema is missing or older than this build, naming the fix.
///
/// # Errors
/// `Permanent` naming `aop migrate` when migrations are pending, the upgrade when the graph
/// is newer, or `aop restore` when a restore into it has not finished.
pub async fn check(store: &Neo4jStore) -> Result<(), StoreError> {
    let current = applied_version(store).await?;
    if current == SCHEMA_VERSION
        && let Some((archive, done)) = crate::backup::unfinished_restore(store).await?
    {
        return Err(StoreError::Permanent {
            message: format!(
                "the graph at {} holds an unfinished restore ({done} records of the archive \
                 with sha256 {archive}): run `aop restore` with that archive again to finish it",
                store.target()
            ),
            source: None,
        });
    }
    match current.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(StoreError::Permanent {
            message: format!(
                "the graph at {} is at schema version {current}, this build needs \
                 {SCHEMA_VERSION}: run `aop migrate` (or set AOP_MIGRATE_ON_START=true)",
                store.target()
            ),
            source: None,
        }),
        std::cmp::Ordering::Greater => Err(StoreError::Permanent {
            message: format!(
                "the graph's schema version {current} is newer than this build supports \
                 ({SCHEMA_VERSION}); upgrade aop"
            ),
            source: None,
        }),
    }
}
