//! Backups and restores of the graph. A backup reads each kind of node in key order, a page per
//! transaction; a restore writes a batch per transaction with the same statements the use cases
//! use (minus their checks and events), and records in that transaction how far it got in a
//! `(:RestoreInProgress {archive, done})` node, so an interrupted restore carries on where it
//! stopped when run again, and the platform refuses to serve the graph until it has.

use std::cmp::Ordering;

use aop_core::AgentId;
use aop_core::StoreError;
use aop_core::backup::{
    BackupSource, CachedRecord, ExportPage, FitnessRecord, Kind, OutboxRecord, Record,
    RestoreTarget,
};
use aop_core::evolution::{EvolutionId, Spend};
use aop_core::feedback::{Feedback, Metric, Rating};
use aop_core::principal::Principal;
use aop_core::session::{FeedbackId, InteractionId, SessionId};
use async_trait::async_trait;
use neo4rs::{BoltType, Row, Txn, query};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::agents::{
    RETURN_AGENT, RETURN_VERSION, agent_props, decode_agent, decode_version, route_rows,
    version_write, write_routes, write_version,
};
use crate::error::corrupt;
use crate::params::{bolt, version_key};
use crate::{Failure, Neo4jStore, Work, column, deployments, evolutions, feedback, outbox};
use crate::{proposals, rows, run, sessions};

/// The node label of each kind.
fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Version => "AgentVersion",
        Kind::Agent => "Agent",
        Kind::Session => "Session",
        Kind::Interaction => "Interaction",
        Kind::Message => "Message",
        Kind::Feedback => "Feedback",
        Kind::Fitness => "Fitness",
        Kind::Deployment => "Deployment",
        Kind::Canary => "Canary",
        Kind::Proposal => "Proposal",
        Kind::EvalCase => "EvalCase",
        Kind::Evolution => "Evolution",
        Kind::Candidate => "Candidate",
        Kind::Cached => "Evaluation",
        Kind::Outbox => "OutboxEvent",
        Kind::Applied => "ProcessedEvent",
        Kind::Quarantined => "QuarantinedEvent",
    }
}

/// The properties a kind is ordered by, and what each page returns.
fn order(kind: Kind) -> (&'static [&'static str], &'static str) {
    match kind {
        Kind::Version => (&["created_at", "agent_id", "version"], RETURN_VERSION),
        Kind::Agent => (&["agent_id"], RETURN_AGENT),
        Kind::Session => (&["session_id"], "RETURN properties(n) AS session"),
        Kind::Interaction => (&["interaction_id"], "RETURN properties(n) AS interaction"),
        Kind::Message => (&["session_id", "seq"], "RETURN properties(n) AS message"),
        Kind::Feedback => (
            &["feedback_id"],
            "OPTIONAL MATCH (n)-[:HAS_RATING]->(r:Rating)
             WITH n, r ORDER BY n.feedback_id, r.metric
             WITH n, collect(properties(r)) AS ratings
             RETURN properties(n) AS feedback, ratings ORDER BY n.feedback_id",
        ),
        Kind::Fitness => (
            &["agent_id", "version", "metric"],
            "RETURN properties(n) AS x",
        ),
        Kind::Deployment => (&["deployment_id"], "RETURN n.body AS body"),
        Kind::Canary => (&["canary_id"], "RETURN n.body AS body"),
        Kind::Proposal => (&["proposal_id"], "RETURN n.body AS body"),
        Kind::EvalCase => (&["case_id"], "RETURN n.body AS body"),
        Kind::Evolution => (&["evolution_id"], "RETURN n.body AS body"),
        Kind::Candidate => (&["candidate_id"], "RETURN n.body AS body"),
        Kind::Cached => (&["evolution_id", "key"], "RETURN properties(n) AS x"),
        Kind::Outbox | Kind::Applied | Kind::Quarantined => {
            (&["event_id"], "RETURN properties(n) AS x")
        }
    }
}

/// The values a record is ordered by, as [`order`] names them.
fn key_of(record: &Record) -> Vec<Value> {
    match record {
        Record::Version(v) => vec![
            json!(v.created_at),
            json!(v.agent_id.as_str()),
            json!(v.version),
        ],
        Record::Agent(a) => vec![json!(a.agent_id.as_str())],
        Record::Session(s) => vec![json!(s.session_id.as_str())],
        Record::Interaction(i) => vec![json!(i.interaction_id.as_str())],
        Record::Message(m) => vec![json!(m.session_id.as_str()), json!(m.seq)],
        Record::Feedback(f) => vec![json!(f.feedback_id.as_str())],
        Record::Fitness(f) => vec![
            json!(f.agent_id.as_str()),
            json!(f.version),
            json!(f.metric.key()),
        ],
        Record::Deployment(d) => vec![json!(d.deployment_id.as_str())],
        Record::Canary(c) => vec![json!(c.canary_id.as_str())],
        Record::Proposal(p) => vec![json!(p.proposal_id.as_str())],
        Record::EvalCase(c) => vec![json!(c.case_id.as_str())],
        Record::Evolution(e) => vec![json!(e.evolution_id.as_str())],
        Record::Candidate(c) => vec![json!(c.candidate_id.as_str())],
        Record::Cached(c) => vec![
            json!(c.evolution_id.as_str()),
            json!(format!("{}|{}", c.evolution_id, c.key)),
        ],
        Record::Outbox(e) => vec![json!(e.event_id)],
        Record::Applied(a) => vec![json!(a.event_id)],
        Record::Quarantined(q) => vec![json!(q.event_id)],
    }
}

fn compare_keys(a: &[Value], b: &[Value]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (Value::Number(x), Value::Number(y)) => {
                x.as_i64().unwrap_or(0).cmp(&y.as_i64().unwrap_or(0))
            }
            (Value::String(x), Value::String(y)) => x.cmp(y),
            _ => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn to_bolt(v: &Value) -> BoltType {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0).into(),
        Value::String(s) => s.as_str().into(),
        _ => BoltType::Null(neo4rs::BoltNull),
    }
}

/// `k1 > $k0 OR (k1 = $k0 AND k2 > $k1) ...` on node `n`: after a position, in key order.
fn after_clause(keys: &[&str]) -> String {
    (0..keys.len())
        .map(|i| {
            let mut parts: Vec<String> = (0..i).map(|j| format!("n.{} = $k{j}", keys[j])).collect();
            parts.push(format!("n.{} > $k{i}", keys[i]));
            format!("({})", parts.join(" AND "))
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

#[derive(Deserialize)]
struct RawFeedback {
    feedback_id: String,
    agent_id: String,
    version: u32,
    session_id: Option<String>,
    interaction_id: Option<String>,
    comments: Option<String>,
    #[serde(default)]
    categories: Vec<String>,
    user_id: String,
    created_at: i64,
    submitted_by: Option<String>,
}

#[derive(Deserialize)]
struct RawRating {
    metric: String,
    value: f64,
    scale_min: f64,
    scale_max: f64,
    normalized: f64,
}

fn decode_feedback(row: &Row) -> Result<Feedback, StoreError> {
    let f: RawFeedback = column(row, "feedback", "feedback")?;
    let ratings: Vec<RawRating> = column(row, "ratings", "feedback ratings")?;
    Ok(Feedback {
        feedback_id: FeedbackId::try_from(f.feedback_id).map_err(|e| corrupt("feedback id", e))?,
        agent_id: AgentId::try_from(f.agent_id).map_err(|e| corrupt("agent id", e))?,
        version: f.version,
        session_id: f
            .session_id
            .map(SessionId::try_from)
            .transpose()
            .map_err(|e| corrupt("session id", e))?,
        interaction_id: f
            .interaction_id
            .map(InteractionId::try_from)
            .transpose()
            .map_err(|e| corrupt("interaction id", e))?,
        ratings: ratings
            .into_iter()
            .map(|r| Rating {
                metric: r.metric,
                value: r.value,
                scale_min: r.scale_min,
                scale_max: r.scale_max,
                normalized: r.normalized,
            })
            .collect(),
        comments: f.comments,
        categories: f.categories,
        user_id: f.user_id,
        created_at: f.created_at,
        submitted_by: f.submitted_by.as_deref().map(Principal::named),
    })
}

#[derive(Deserialize)]
struct RawFitness {
    agent_id: String,
    version: u32,
    metric: String,
    samples: i64,
    mean: f64,
    m2: f64,
    #[serde(default)]
    updated_at: i64,
}

#[derive(Deserialize)]
struct RawEvaluation {
    key: String,
    evolution_id: String,
    iteration: u32,
    metric_calls: u32,
    llm_calls: u32,
    tokens: i64,
    cost_usd: f64,
    value: String,
}

fn body<T: serde::de::DeserializeOwned>(row: &Row, what: &str) -> Result<T, StoreError> {
    let text: String = column(row, "body", what)?;
    serde_json::from_str(&text).map_err(|e| corrupt(what, e))
}

fn decode(kind: Kind, row: &Row) -> Result<Record, StoreError> {
    Ok(match kind {
        Kind::Version => Record::Version(decode_version(row)?),
        Kind::Agent => Record::Agent(decode_agent(row)?),
        Kind::Session => Record::Session(sessions::decode_session(row)?),
        Kind::Interaction => Record::Interaction(sessions::decode_interaction(row)?),
        Kind::Message => Record::Message(sessions::decode_message(row)?),
        Kind::Feedback => Record::Feedback(decode_feedback(row)?),
        Kind::Fitness => {
            let x: RawFitness = column(row, "x", "fitness")?;
            Record::Fitness(FitnessRecord {
                agent_id: AgentId::try_from(x.agent_id).map_err(|e| corrupt("agent id", e))?,
                version: x.version,
                metric: Metric::parse(&x.metric).ok_or_else(|| corrupt("metric", &x.metric))?,
                count: u64::try_from(x.samples).unwrap_or(0),
                mean: x.mean,
                m2: x.m2,
                updated_at: x.updated_at,
            })
        }
        Kind::Deployment => Record::Deployment(body(row, "deployment")?),
        Kind::Canary => Record::Canary(Box::new(body(row, "canary")?)),
        Kind::Proposal => Record::Proposal(body(row, "proposal")?),
        Kind::EvalCase => Record::EvalCase(body(row, "evaluation case")?),
        Kind::Evolution => Record::Evolution(Box::new(body(row, "evolution")?)),
        Kind::Candidate => Record::Candidate(body(row, "candidate")?),
        Kind::Cached => {
            let x: RawEvaluation = column(row, "x", "cached evaluation")?;
            let key = x
                .key
                .strip_prefix(&format!("{}|", x.evolution_id))
                .unwrap_or(&x.key)
                .to_owned();
            Record::Cached(CachedRecord {
                evolution_id: EvolutionId::try_from(x.evolution_id)
                    .map_err(|e| corrupt("evolution id", e))?,
                key,
                iteration: x.iteration,
                spend: Spend {
                    metric_calls: x.metric_calls,
                    llm_calls: x.llm_calls,
                    tokens: u64::try_from(x.tokens).unwrap_or(0),
                    cost_usd: x.cost_usd,
                },
                value: serde_json::from_str(&x.value)
                    .map_err(|e| corrupt("cached evaluation", e))?,
            })
        }
        Kind::Outbox => {
            let x: outbox::RawEvent = column(row, "x", "outbox event")?;
            Record::Outbox(OutboxRecord {
                data: serde_json::from_str(&x.data).map_err(|e| corrupt("event data", e))?,
                event_id: x.event_id,
                event_type: x.event_type,
                subject: x.subject,
                time: x.time,
                correlation_id: x.correlation_id,
            })
        }
        Kind::Applied => Record::Applied(column(row, "x", "applied event")?),
        Kind::Quarantined => Record::Quarantined(column(row, "x", "quarantined event")?),
    })
}

/// One batch of records as statement parameters, made before the transaction so each retry
/// reuses them.
#[derive(Clone)]
enum Batch {
    /// Statements run once with `$rows`.
    Rows(Vec<&'static str>, BoltType),
    /// A write per record.
    Each(Vec<Write>),
}

#[derive(Clone)]
enum Write {
    Version(String, Box<crate::agents::VersionWrite>),
    Agent(String, BoltType, BoltType),
    Feedback(Box<feedback::FeedbackWrite>),
    Deployment(Box<deployments::DeploymentWrite>, String),
    Canary(BoltType, String),
    Proposal {
        id: String,
        props: BoltType,
        base: String,
        reviews: BoltType,
        applied: Option<String>,
    },
    Evolution {
        id: String,
        agent: String,
        seed: String,
        props: BoltType,
        generated: Option<String>,
    },
}

fn rows_of(values: Vec<Value>) -> Result<BoltType, StoreError> {
    bolt(Value::Array(values))
}

fn prepare(kind: Kind, records: &[Record]) -> Result<Batch, StoreError> {
    macro_rules! each {
        ($variant:ident) => {
            records.iter().filter_map(|r| match r {
                Record::$variant(x) => Some(x),
                _ => None,
            })
        };
    }
    Ok(match kind {
        Kind::Version => Batch::Each(
            each!(Version)
                .map(|v| {
                    Ok(Write::Version(
                        v.agent_id.to_string(),
                        Box::new(version_write(v)?),
                    ))
                })
                .collect::<Result<_, StoreError>>()?,
        ),
        Kind::Agent => Batch::Each(
            each!(Agent)
                .map(|a| {
                    Ok(Write::Agent(
                        a.agent_id.to_string(),
                        agent_props(a)?,
                        route_rows(a)?,
                    ))
                })
                .collect::<Result<_, StoreError>>()?,
        ),
        Kind::Session => Batch::Rows(
            vec![
                "UNWIND $rows AS row
                 CREATE (s:Session {session_id: row.props.session_id}) SET s += row.props
                 WITH s, row
                 MATCH (v:AgentVersion {key: row.key})
                 CREATE (s)-[:WITH_AGENT]->(v)",
            ],
            rows_of(
                each!(Session)
                    .map(|s| {
                        Ok(json!({
                            "props": sessions::session_props(s)?,
                            "key": version_key(s.agent_id.as_str(), s.version),
                        }))
                    })
                    .collect::<Result<_, StoreError>>()?,
            )?,
        ),
        Kind::Interaction => Batch::Rows(
            vec![
                sessions::CREATE_INTERACTIONS,
                sessions::LINK_INTERACTIONS_TO_VERSIONS,
                sessions::LINK_INTERACTIONS_TO_SESSIONS,
                sessions::LINK_DELEGATED,
                // A delegated turn may come after the turn that delegated to it.
                "UNWIND $rows AS row
                 WITH row WHERE row.props.parent_interaction_id IS NOT NULL
                 MATCH (child:Interaction {interaction_id: row.interaction_id})
                 MATCH (parent:Interaction {interaction_id: row.props.parent_interaction_id})
                 MERGE (parent)-[:DELEGATED_TO]->(child)",
            ],
            rows_of(
                each!(Interaction)
                    .map(sessions::interaction_row)
                    .collect::<Result<_, StoreError>>()?,
            )?,
        ),
        Kind::Message => Batch::Rows(
            vec![sessions::CREATE_MESSAGES],
            rows_of(each!(Message).map(sessions::message_row).collect())?,
        ),
        Kind::Feedback => Batch::Each(
            each!(Feedback)
                .map(|f| Ok(Write::Feedback(Box::new(feedback::feedback_write(f)?))))
                .collect::<Result<_, StoreError>>()?,
        ),
        Kind::Fitness => Batch::Rows(
            vec![
                "UNWIND $rows AS row
                 CREATE (x:Fitness {key: row.key})
                 SET x.agent_id = row.agent_id, x.version = row.version, x.metric = row.metric,
                     x.samples = row.samples, x.mean = row.mean, x.m2 = row.m2,
                     x.updated_at = row.updated_at
                 WITH x, row
                 MATCH (v:AgentVersion {key: row.version_key})
                 MERGE (x)-[:OF]->(v)",
            ],
            rows_of(
                each!(Fitness)
                    .map(|f| {
                        let vk = version_key(f.agent_id.as_str(), f.version);
                        json!({
                            "key": format!("{vk}:{}", f.metric),
                            "version_key": vk,
                            "agent_id": f.agent_id.as_str(),
                            "version": f.version,
                            "metric": f.metric.key(),
                            "samples": i64::try_from(f.count).unwrap_or(i64::MAX),
                            "mean": f.mean,
                            "m2": f.m2,
                            "updated_at": f.updated_at,
                        })
                    })
                    .collect(),
            )?,
        ),
        Kind::Deployment => Batch::Each(
            each!(Deployment)
                .map(|d| {
                    Ok(Write::Deployment(
                        Box::new(deployments::deployment_write(d)?),
                        d.deployment_id.to_string(),
                    ))
                })
                .collect::<Result<_, StoreError>>()?,
        ),
        Kind::Canary => Batch::Each(
            each!(Canary)
                .map(|c| {
                    Ok(Write::Canary(
                        deployments::canary_props(c)?,
                        c.canary_id.to_string(),
                    ))
                })
                .collect::<Result<_, StoreError>>()?,
        ),
        Kind::Proposal => Batch::Each(
            each!(Proposal)
                .map(|p| {
                    Ok(Write::Proposal {
                        id: p.proposal_id.to_string(),
                        props: proposals::props(p)?,
                        base: version_key(p.agent_id.as_str(), p.base_version),
                        reviews: proposals::reviews(p)?,
                        applied: p.version.map(|v| version_key(p.agent_id.as_str(), v)),
                    })
                })
                .collect::<Result<_, StoreError>>()?,
        ),
        Kind::EvalCase => Batch::Rows(
            vec![evolutions::CREATE_EVAL_CASES],
            evolutions::eval_case_rows(&each!(EvalCase).cloned().collect::<Vec<_>>())?,
        ),
        Kind::Evolution => Batch::Each(
            each!(Evolution)
                .map(|e| {
                    Ok(Write::Evolution {
                        id: e.evolution_id.to_string(),
                        agent: e.agent_id.to_string(),
                        seed: version_key(e.agent_id.as_str(), e.seed_version),
                        props: evolutions::run_props(e)?,
                        generated: e
                            .winner
                            .as_ref()
                            .map(|w| version_key(e.agent_id.as_str(), w.version)),
                    })
                })
                .collect::<Result<_, StoreError>>()?,
        ),
        Kind::Candidate => Batch::Rows(
            vec![
                evolutions::CREATE_CANDIDATES,
                evolutions::LINK_CANDIDATE_PARENTS,
            ],
            evolutions::candidate_rows(&each!(Candidate).cloned().collect::<Vec<_>>())?,
        ),
        Kind::Cached => Batch::Rows(
            vec![evolutions::MERGE_CACHE],
            rows_of(
                each!(Cached)
                    .map(|c| evolutions::cache_row(c.evolution_id.as_str(), &c.entry()))
                    .collect::<Result<_, StoreError>>()?,
            )?,
        ),
        Kind::Outbox => Batch::Rows(
            vec![outbox::CREATE_EVENTS],
            rows_of(
                each!(Outbox)
                    .map(|e| {
                        json!({
                            "event_id": e.event_id,
                            "event_type": e.event_type,
                            "subject": e.subject,
                            "time": e.time,
                            "data": e.data.to_string(),
                            "correlation_id": e.correlation_id,
                        })
                    })
                    .collect(),
            )?,
        ),
        Kind::Applied => Batch::Rows(
            vec![
                "UNWIND $rows AS row
                 CREATE (:ProcessedEvent {event_id: row.event_id, processed_at: row.processed_at})",
            ],
            rows_of(
                each!(Applied)
                    .map(|a| json!({"event_id": a.event_id, "processed_at": a.processed_at}))
                    .collect(),
            )?,
        ),
        Kind::Quarantined => Batch::Rows(
            vec![
                "UNWIND $rows AS row
                 CREATE (q:QuarantinedEvent {event_id: row.event_id}) SET q += row",
            ],
            rows_of(
                each!(Quarantined)
                    .map(|q| serde_json::to_value(q).unwrap_or_default())
                    .collect(),
            )?,
        ),
    })
}

async fn write_batch(txn: &mut Txn, batch: &Batch) -> Result<(), Failure> {
    match batch {
        Batch::Rows(statements, rows) => {
            for statement in statements {
                run(txn, query(statement).param("rows", rows.clone())).await?;
            }
        }
        Batch::Each(writes) => {
            for w in writes {
                match w {
                    Write::Version(agent_id, v) => {
                        // Versions come before their agents: the agent node is made here and
                        // filled in when its record comes.
                        run(
                            txn,
                            query("MERGE (a:Agent {agent_id: $id})").param("id", agent_id.as_str()),
                        )
                        .await?;
                        write_version(txn, agent_id, v).await?;
                    }
                    Write::Agent(id, props, routes) => {
                        run(
                            txn,
                            query("MERGE (a:Agent {agent_id: $id}) SET a += $props")
                                .param("id", id.as_str())
                                .param("props", props.clone()),
                        )
                        .await?;
                        write_routes(txn, id, routes).await?;
                    }
                    Write::Feedback(f) => feedback::write_feedback(txn, f).await?,
                    Write::Deployment(d, id) => deployments::write_deployment(txn, d, id).await?,
                    Write::Canary(props, id) => {
                        deployments::write_canary(txn, props.clone(), id, None).await?;
                    }
                    Write::Proposal {
                        id,
                        props,
                        base,
                        reviews,
                        applied,
                    } => {
                        proposals::create_proposal(txn, props.clone(), base).await?;
                        proposals::write_reviews(txn, id, reviews.clone(), applied.as_deref())
                            .await?;
                    }
                    Write::Evolution {
                        id,
                        agent,
                        seed,
                        props,
                        generated,
                    } => {
                        evolutions::create_evolution(txn, agent, seed, props.clone()).await?;
                        if let Some(key) = generated {
                            evolutions::link_generated(txn, id, key).await?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[async_trait]
impl BackupSource for Neo4jStore {
    async fn census(&self) -> Result<Vec<(Kind, u64)>, StoreError> {
        census(self).await
    }

    async fn export(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ExportPage, StoreError> {
        let (keys, tail) = order(kind);
        let position: Option<Vec<Value>> = after
            .map(|p| serde_json::from_str(p).map_err(|e| corrupt("backup position", e)))
            .transpose()?;
        let filter = if position.is_some() {
            format!("WHERE {}", after_clause(keys))
        } else {
            String::new()
        };
        let order_by = keys
            .iter()
            .map(|k| format!("n.{k}"))
            .collect::<Vec<_>>()
            .join(", ");
        // RETURN_AGENT and RETURN_VERSION name their node `a` and `v`.
        let bind = match kind {
            Kind::Agent => "WITH n AS a ",
            Kind::Version => "WITH n AS v ",
            _ => "",
        };
        let statement = format!(
            "MATCH (n:{}) {filter} WITH n ORDER BY {order_by} LIMIT $limit {bind}{tail}",
            label(kind)
        );
        let found = self
            .transact("backup", |txn| -> Work<'_, Vec<Row>> {
                let mut q = query(&statement).param("limit", i64::from(limit));
                for (i, v) in position.iter().flatten().enumerate() {
                    q = q.param(&format!("k{i}"), to_bolt(v));
                }
                Box::pin(rows(txn, q))
            })
            .await?;
        let mut records = found
            .iter()
            .map(|row| decode(kind, row))
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Some projections order by something else (a version number); the page's order is
        // the key's.
        records.sort_by(|a, b| compare_keys(&key_of(a), &key_of(b)));
        let next = (records.len() == limit as usize)
            .then(|| records.last().map(|r| Value::Array(key_of(r)).to_string()))
            .flatten();
        Ok(ExportPage { records, next })
    }
}

async fn census(store: &Neo4jStore) -> Result<Vec<(Kind, u64)>, StoreError> {
    let found = store
        .transact("census", |txn| -> Work<'_, Vec<(Kind, i64)>> {
            Box::pin(async move {
                let mut counts = Vec::new();
                for kind in Kind::ALL {
                    let q = query(&format!("MATCH (n:{}) RETURN count(n) AS n", label(kind)));
                    let found = rows(txn, q).await?;
                    let n: i64 = found.first().map_or(Ok(0), |r| column(r, "n", "count"))?;
                    counts.push((kind, n));
                }
                Ok(counts)
            })
        })
        .await?;
    Ok(found
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// The unfinished restore in a graph, if one is: its archive's checksum and how many records
/// are in.
pub(crate) async fn unfinished_restore(
    store: &Neo4jStore,
) -> Result<Option<(String, u64)>, StoreError> {
    let found = store
        .transact("restore_marker", |txn| -> Work<'_, Vec<Row>> {
            Box::pin(rows(
                txn,
                query(
                    "MATCH (m:RestoreInProgress) RETURN m.archive AS archive, m.done AS done
                     LIMIT 1",
                ),
            ))
        })
        .await?;
    found
        .first()
        .map(|r| {
            let done: i64 = column(r, "done", "restore progress")?;
            Ok((
                column(r, "archive", "restore archive")?,
                u64::try_from(done).unwrap_or(0),
            ))
        })
        .transpose()
}

#[async_trait]
impl RestoreTarget for Neo4jStore {
    async fn census(&self) -> Result<Vec<(Kind, u64)>, StoreError> {
        census(self).await
    }

    async fn restored_so_far(&self, archive: &str) -> Result<Option<u64>, StoreError> {
        match unfinished_restore(self).await? {
            Some((other, _)) if other != archive => Err(StoreError::Permanent {
                message: format!(
                    "the graph holds an unfinished restore of another archive (sha256 {other}): \
                     finish it with that archive, or empty the database"
                ),
                source: None,
            }),
            Some((_, done)) => Ok(Some(done)),
            None => Ok(None),
        }
    }

    async fn import(&self, archive: &str, done: u64, records: &[Record]) -> Result<(), StoreError> {
        let Some(kind) = records.first().map(Record::kind) else {
            return Ok(());
        };
        let batch = prepare(kind, records)?;
        let done = i64::try_from(done).unwrap_or(i64::MAX);
        let archive = archive.to_owned();
        self.transact("restore", |txn| -> Work<'_, ()> {
            let (batch, archive) = (batch.clone(), archive.clone());
            Box::pin(async move {
                write_batch(txn, &batch).await?;
                run(
                    txn,
                    query("MERGE (m:RestoreInProgress {archive: $archive}) SET m.done = $done")
                        .param("archive", archive.as_str())
                        .param("done", done),
                )
                .await
            })
        })
        .await
        .map_err(|e| match e {
            // A duplicate or a missing reference is the archive's, not a race to retry.
            StoreError::Conflict(message) => StoreError::Permanent {
                message: format!("cannot load the {}: {message}", kind.plural()),
                source: None,
            },
            other => other,
        })
    }

    async fn finish_restore(&self, archive: &str) -> Result<(), StoreError> {
        self.transact("finish_restore", |txn| -> Work<'_, ()> {
            Box::pin(run(
                txn,
                query("MATCH (m:RestoreInProgress {archive: $archive}) DELETE m")
                    .param("archive", archive),
            ))
        })
        .await
    }
}

#[cfg(feature = "testing")]
impl Neo4jStore {
    /// Deletes every node of the database, 5,000 a transaction. For tests and benchmarks that
    /// need an empty graph (feature `testing`).
    pub async fn erase_everything(&self) -> Result<(), StoreError> {
        loop {
            let deleted = self
                .transact("erase", |txn| -> Work<'_, Vec<Row>> {
                    Box::pin(rows(
                        txn,
                        query("MATCH (n) WITH n LIMIT 5000 DETACH DELETE n RETURN count(*) AS n"),
                    ))
                })
                .await?;
            let n: i64 = deleted.first().map_or(Ok(0), |r| column(r, "n", "count"))?;
            if n == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_selects_what_comes_after_it_in_key_order() {
        assert_eq!(after_clause(&["a"]), "(n.a > $k0)");
        assert_eq!(
            after_clause(&["a", "b"]),
            "(n.a > $k0) OR (n.a = $k0 AND n.b > $k1)"
        );
    }

    #[test]
    fn keys_compare_numbers_as_numbers() {
        let a = vec![json!(9), json!("x")];
        let b = vec![json!(10), json!("a")];
        assert_eq!(compare_keys(&a, &b), Ordering::Less);
    }
}
