//! `aop`: the whole platform in one process (`aop serve`, the default) and operator commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use aop_runtime::config::settings_help;
use aop_runtime::{Config, Overrides, Platform, Role, telemetry};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "aop",
    version,
    about = "Agent Orchestration Platform: hosts AI agents behind an MCP endpoint",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP at /mcp, plus /health and /metrics (the default command).
    Serve(ServeArgs),
    /// Apply store schema migrations and exit.
    Migrate(CommonArgs),
    /// Check every configured dependency (secrets, store, Kafka, LLM) and say how to fix what
    /// fails. Exits non-zero when a check fails.
    Doctor(CommonArgs),
    /// Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Events on Kafka.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Fitness statistics.
    #[command(subcommand)]
    Fitness(FitnessCommand),
    /// Write everything the platform stores (agents, versions, sessions, interactions,
    /// feedback, fitness, deployments, canaries, proposals, evolutions, the outbox, the
    /// applied-event ledger) to an archive: a consistent snapshot, taken while it keeps serving.
    Backup(backup::BackupArgs),
    /// Load an archive written by `aop backup` into an empty store (embedded or Neo4j): checked
    /// whole first, then loaded all-or-nothing (Neo4j: an interrupted restore carries on when run
    /// again with the same archive).
    Restore(backup::RestoreArgs),
    /// Evolve an agent from its feedback and evaluation cases, in this process, with a progress
    /// bar: the winner becomes a proposal (or a canary with --mode auto); no alias moves.
    Evolve(EvolveArgs),
}

#[derive(Args, Clone)]
struct EvolveArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The agent to evolve.
    #[arg(value_name = "AGENT_ID", required_unless_present = "resume")]
    agent_id: Option<String>,
    /// Carry on with a run that is already running instead of starting one.
    #[arg(long, value_name = "EVOLUTION_ID", conflicts_with = "agent_id")]
    resume: Option<String>,
    /// The alias whose most-served version is the seed [default: prod]
    #[arg(long)]
    alias: Option<String>,
    /// review (the winner becomes a proposal) or auto (a canary) [default: review]
    #[arg(long)]
    mode: Option<String>,
    /// Metric-call budget [default: 300]
    #[arg(long, value_name = "N")]
    max_metric_calls: Option<u32>,
    /// Cost budget in US dollars [default: 5]
    #[arg(long, value_name = "USD")]
    max_cost_usd: Option<f64>,
    /// Time budget in seconds [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    max_seconds: Option<u64>,
    /// Cases held out for validation [default: 30]
    #[arg(long, value_name = "N")]
    valset_size: Option<usize>,
    /// Training cases per iteration [default: 3]
    #[arg(long, value_name = "N")]
    minibatch_size: Option<usize>,
    /// Replay rated turns from this many days back [default: 14]
    #[arg(long, value_name = "DAYS")]
    window_days: Option<u32>,
    /// The model that rewrites instructions [default: the agent's]
    #[arg(long, value_name = "MODEL")]
    reflection_model: Option<String>,
    /// The model of judge checks [default: the agent's]
    #[arg(long, value_name = "MODEL")]
    judge_model: Option<String>,
    /// Write the validation score per iteration as an SVG chart to this file at the end.
    #[arg(long, value_name = "PATH")]
    chart: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the event topics and their dead-letter topics (kafka section of the config);
    /// existing topics are left alone and any partition-count drift is reported.
    Apply(CommonArgs),
}

#[derive(Subcommand)]
enum FitnessCommand {
    /// Recompute every fitness statistic from the stored interactions and feedback and report
    /// where the statistics kept from events differ (exits non-zero when one does).
    Rebuild(CommonArgs),
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Send the dead letters of TOPIC (TOPIC.dlq) written so far back to TOPIC, once each, in
    /// order: after an outage longer than the retries, or a fix. Handlers apply each event at
    /// most once, so letters applied after all change nothing.
    Redrive(RedriveArgs),
}

#[derive(Args, Clone)]
struct RedriveArgs {
    /// The topic whose dead letters go back (agent_events, feedback_events, ...).
    topic: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Clone, Default)]
struct CommonArgs {
    /// Configuration file (YAML with server, database, kafka and openai sections).
    /// Default: $AOP_CONFIG, else ./config.yaml when it exists.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Directory of the embedded store [env: AOP_DATA_DIR] [default: ./.aop]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Log filter: error, warn, info, debug, trace, or per module (aop=debug,info) [env: LOG_LEVEL]
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to bind; beyond loopback only with API keys [env: MCP_SERVER_HOST] [default: 127.0.0.1]
    #[arg(long, value_name = "IP")]
    host: Option<String>,
    /// Port to bind; 0 picks a free one [env: MCP_SERVER_PORT] [default: 8000]
    #[arg(long, value_name = "PORT")]
    port: Option<String>,
    /// Serve without MCP sessions, every request standing alone [env: AOP_STATELESS]
    #[arg(long)]
    stateless: bool,
    /// Answer with application/json instead of SSE where possible [env: AOP_JSON_RESPONSE]
    #[arg(long)]
    json_response: bool,
}

impl CommonArgs {
    fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        if let Some(v) = &self.data_dir {
            o.set("database.data_dir", "--data-dir", v);
        }
        if let Some(v) = &self.log_level {
            o.set("logging.level", "--log-level", v);
        }
        o
    }
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        let mut o = self.common.overrides();
        if let Some(v) = &self.host {
            o.set("server.host", "--host", v);
        }
        if let Some(v) = &self.port {
            o.set("server.port", "--port", v);
        }
        if self.stateless {
            o.set("server.stateless", "--stateless", "true");
        }
        if self.json_response {
            o.set("server.json_response", "--json-response", "true");
        }
        o
    }
}

/// Parses the command line. `aop serve --help` ends with every setting, its variable and its
/// default; that list formats every section's defaults, so it is built only when help is asked
/// for, not at every start.
fn parse_cli<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let mut command = Cli::command();
    if args
        .iter()
        .skip(1)
        .any(|a| a == "-h" || a == "--help" || a == "help")
    {
        command = command.mut_subcommand("serve", |serve| serve.after_help(settings_help()));
    }
    let matches = command.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

fn main() -> ExitCode {
    let cli = parse_cli(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Some(Command::Serve(args)) => serve(&args),
        None => serve(&cli.serve),
        Some(Command::Migrate(args)) => migrate(&args),
        Some(Command::Doctor(args)) => doctor(&args),
        Some(Command::Topics(TopicsCommand::Apply(args))) => topics_apply(&args),
        Some(Command::Events(EventsCommand::Redrive(args))) => events_redrive(&args),
        Some(Command::Fitness(FitnessCommand::Rebuild(args))) => fitness_rebuild(&args),
        Some(Command::Evolve(args)) => evolve::run(&args),
        Some(Command::Backup(args)) => backup::run_backup(&args),
        Some(Command::Restore(args)) => backup::run_restore(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aop: {e}");
            let mut source = std::error::Error::source(e.as_ref());
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

mod backup;
mod evolve;

fn load(common: &CommonArgs, overrides: &Overrides) -> Result<Config, BoxError> {
    let config = Config::load(common.config.as_deref(), overrides)?;
    telemetry::init(config.log_level())?;
    Ok(config)
}

fn migrate(args: &CommonArgs) -> Result<(), BoxError> {
    let config = load(args, &args.overrides())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (config, secrets) = aop_runtime::settle(config, Role::Local).await?;
        // Opening the embedded store migrates it; the graph is migrated explicitly.
        let stores = aop_runtime::roles::open_stores(&config, secrets.as_ref())?;
        if let Some(store) = stores.neo4j() {
            let applied = aop_store_neo4j::migrations::migrate(store).await?;
            for version in &applied {
                let name = aop_store_neo4j::migrations::MIGRATIONS[*version as usize - 1].name;
                println!("applied   {version} {name}");
            }
        }
        println!(
            "store schema is up to date: {} (version {})",
            stores.description(),
            if stores.neo4j().is_some() {
                aop_store_neo4j::SCHEMA_VERSION
            } else {
                aop_store_sqlite::SCHEMA_VERSION
            }
        );
        Ok(())
    })
}

fn doctor(args: &CommonArgs) -> Result<(), BoxError> {
    // Warnings only: the checks speak for themselves, and log lines would interleave.
    let mut overrides = args.overrides();
    if args.log_level.is_none() {
        overrides.set("logging.level", "--log-level", "warn");
    }
    let config = load(args, &overrides)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let checks = runtime.block_on(async {
        // With secrets and the MSK brokers filled in when they can be; when they cannot, the
        // checks run on what is configured and the secrets check says what failed.
        let config = match aop_runtime::settle(config.clone(), Role::Local).await {
            Ok((settled, _)) => settled,
            Err(e) => {
                tracing::warn!(error = %e, "cannot complete the configuration from AWS");
                config
            }
        };
        aop_runtime::doctor::run(&config).await
    });
    for check in &checks {
        println!("{}", check.render());
    }
    let failed = checks
        .iter()
        .filter(|c| c.status == aop_runtime::doctor::Status::Failed)
        .count();
    if failed > 0 {
        return Err(format!("{failed} check(s) failed").into());
    }
    Ok(())
}

fn topics_apply(args: &CommonArgs) -> Result<(), BoxError> {
    use aop_events::kafka::{TopicOutcome, apply_topics};
    let config = load(args, &args.overrides())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (config, _) = runtime.block_on(aop_runtime::settle(config, Role::Local))?;
    let kafka = &config.kafka;
    let settings = aop_runtime::adapters::kafka_client(&config)?;
    let specs = kafka.topic_specs();
    let outcomes = runtime.block_on(apply_topics(&settings, &specs))?;
    let mut drift = false;
    for (name, outcome) in outcomes {
        match outcome {
            TopicOutcome::Created => println!("created   {name}"),
            TopicOutcome::Unchanged => println!("unchanged {name}"),
            TopicOutcome::Drift { partitions } => {
                drift = true;
                println!(
                    "drift     {name}: {partitions} partitions, configured {}",
                    kafka.partitions
                );
            }
        }
    }
    if drift {
        return Err("some topics differ from the configuration (partitions are never changed automatically)".into());
    }
    Ok(())
}

fn fitness_rebuild(args: &CommonArgs) -> Result<(), BoxError> {
    let config = load(args, &args.overrides())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let audit = runtime.block_on(async {
        let (config, secrets) = aop_runtime::settle(config, Role::Local).await?;
        let stores = aop_runtime::roles::open_stores(&config, secrets.as_ref())?;
        let audit = aop_core::services::fitness::audit_fitness(
            stores.agents.as_ref(),
            stores.sessions.as_ref(),
            stores.feedback.as_ref(),
        )
        .await?;
        Ok::<_, BoxError>(audit)
    })?;
    for difference in &audit.differences {
        println!("differs   {difference}");
    }
    println!(
        "{} agents, {} statistics recomputed from history; {} differ from the kept ones",
        audit.agents,
        audit.statistics,
        audit.differences.len()
    );
    if audit.differences.is_empty() {
        Ok(())
    } else {
        Err("fitness statistics differ from history (events still in the outbox or dead-lettered, or a store edited by hand)".into())
    }
}

fn events_redrive(args: &RedriveArgs) -> Result<(), BoxError> {
    let config = load(&args.common, &args.common.overrides())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (config, _) = runtime.block_on(aop_runtime::settle(config, Role::Local))?;
    let settings = aop_runtime::adapters::kafka_client(&config)?;
    let sent = runtime.block_on(aop_events::redrive::redrive(
        &settings,
        &args.topic,
        std::time::Duration::from_secs(args.timeout_secs),
    ))?;
    println!(
        "re-drove {sent} dead letters from {} to {}",
        aop_events::Topics::dead_letter(&args.topic),
        args.topic
    );
    Ok(())
}

fn serve(args: &ServeArgs) -> Result<(), BoxError> {
    let config = load(&args.common, &args.overrides())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> Result<(), BoxError> {
    let (config, platform) = Platform::start(config).await?;
    let shutdown = CancellationToken::new();
    let app = platform
        .mcp
        .router(config.server.http_options(shutdown.clone()));
    let addr = SocketAddr::new(config.server.host, config.server.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot bind {addr} (server.port / MCP_SERVER_PORT): {e}"))?;
    let bound = listener.local_addr()?;
    if config.server.api_keys.is_empty() {
        tracing::warn!(
            "no API keys configured (AOP_API_KEYS): authentication is off and the server \
             listens on loopback only"
        );
    }
    tracing::info!(
        address = %bound,
        url = %format!("http://{bound}/mcp"),
        store = platform.mcp.stores.description(),
        environment = %config.environment(),
        stateless = config.server.stateless,
        "listening"
    );
    let mut background = Vec::new();
    if config.kafka.bootstrap_servers.is_some() {
        // Events go to Kafka; this process also runs every handler in its consumer group,
        // through the same batch code the MSK event source drives on Lambda.
        let relay = platform.kafka_relay(&config)?;
        background.push(tokio::spawn(relay.run(shutdown.clone())));
        let settings = aop_runtime::adapters::kafka_client(&config)?;
        let dead = std::sync::Arc::new(aop_events::kafka::KafkaDeadLetters::new(&settings)?);
        for subscription in platform.subscriptions() {
            let (settings, dead, observer, stop) = (
                settings.clone(),
                dead.clone(),
                platform.clone(),
                shutdown.clone(),
            );
            background.push(tokio::spawn(async move {
                let topics: Vec<&str> = subscription.topics.iter().map(String::as_str).collect();
                let observe = |stats: &aop_events::msk::BatchStats| observer.observe_batch(stats);
                if let Err(e) = aop_events::consumer::run_observed(
                    &settings,
                    &subscription.group,
                    &topics,
                    subscription.handler.as_ref(),
                    dead.as_ref(),
                    &observe,
                    stop,
                )
                .await
                {
                    tracing::error!(error = %e, group = %subscription.group, "event consumer failed");
                }
            }));
        }
        tracing::info!(servers = ?config.kafka.bootstrap_servers, "events go through Kafka");
    } else {
        // No broker: the outbox feeds the handlers in this process.
        background.push(tokio::spawn(
            platform.in_process_relay().run(shutdown.clone()),
        ));
    }
    // Evolution runs a stopped process left behind carry on where they were.
    match platform.evolution.resume().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(runs = n, "evolution runs resumed"),
        Err(e) => tracing::warn!(error = %e, "cannot resume evolution runs"),
    }
    // Canary checks no traffic triggers (time-based steps, timeouts), proposal expiry and
    // stalled evolution runs.
    background.push(tokio::spawn(
        platform.schedule.clone().run(shutdown.clone()),
    ));
    release_freed_memory();
    let stop = shutdown.clone();
    aop_mcp::listen::serve(listener, app, config.server.limits(), async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    })
    .await;
    shutdown.cancel();
    for task in background {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "background task failed");
        }
    }
    Ok(())
}

/// Hands the memory that start-up allocated and freed back to the OS now. mimalloc returns freed
/// pages a second after they were freed, and only when it next allocates or frees: a server idle
/// after start kept them (2.3 MiB when a start still derived the tool schemas).
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time; it
    // only returns free pages, whoever freed them, so no live allocation is touched.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_help_ends_with_every_setting() {
        for args in [
            &["aop", "serve", "--help"][..],
            &["aop", "help", "serve"],
            &["aop", "serve", "-h"],
        ] {
            let err = parse_cli(args).err().expect("help is shown, not parsed");
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{args:?}");
            let text = err.to_string();
            assert!(
                text.contains("Settings (config.yaml key"),
                "{args:?}: {text}"
            );
            assert!(text.contains("AOP_STATELESS"), "{args:?}: {text}");
        }
    }

    #[test]
    fn serve_arguments_still_parse() {
        let cli = parse_cli(["aop", "serve", "--port", "9000"]).expect("parses");
        match cli.command {
            Some(Command::Serve(args)) => assert_eq!(args.port.as_deref(), Some("9000")),
            _ => panic!("serve expected"),
        }
        let cli = parse_cli(["aop", "--port", "9001"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.port.as_deref(), Some("9001"));
    }
}
