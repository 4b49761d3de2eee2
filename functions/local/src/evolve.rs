//! `aop evolve`: starts (or resumes) an evolution run and steps it in this process, showing a
//! progress bar of the metric-call budget, then says what came of it.

use std::time::{Duration, Instant};

use aop_core::evolution::{EvolutionId, EvolutionStatus};
use aop_core::principal::Principal;
use aop_core::services::evolution::{EvolutionView, InitializeEvolution};
use aop_runtime::Platform;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::{BoxError, EvolveArgs, load};

pub(crate) fn run(args: &EvolveArgs) -> Result<(), BoxError> {
    // Warnings only unless asked: the bar is the output.
    let mut overrides = args.common.overrides();
    if args.common.log_level.is_none() {
        overrides.set("logging.level", "--log-level", "warn");
    }
    let config = load(&args.common, &overrides)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (_, platform) = Platform::start(config).await?;
        let service = &platform.mcp.evolutions;
        let view = match (&args.resume, &args.agent_id) {
            (Some(id), _) => {
                let id = EvolutionId::parse("--resume", id).map_err(|e| e.to_string())?;
                service.status(&id).await?
            }
            (None, Some(agent_id)) => {
                let input = initialize(args, agent_id)?;
                service
                    .initialize(input, &Principal::named("cli"))
                    .await?
            }
            (None, None) => return Err("give an AGENT_ID or --resume EVOLUTION_ID".into()),
        };
        let id = view.evolution_id.clone();
        eprintln!(
            "evolution {id} of agent {}: seed v{}, {} validation and {} training cases ({} from rated turns)",
            view.agent_id,
            view.seed_version,
            view.valset_size,
            view.trainset_size,
            view.replayed_turns
        );
        let started = Instant::now();
        let bar = ProgressBar::new(u64::from(view.budget.max_metric_calls));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} metric calls  {msg}",
            )?
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let mut current = view;
        loop {
            bar.set_position(u64::from(current.spend.metric_calls));
            bar.set_message(summary(&current));
            if current.status != EvolutionStatus::Running {
                break;
            }
            service.step(&id, current.iteration).await?;
            current = service.status(&id).await?;
        }
        bar.finish_with_message(summary(&current));
        report(&current, started.elapsed());
        if let Some(path) = &args.chart {
            let history = service.history(&id).await?;
            let svg = aop_mcp::charts::evolution(&history)?;
            std::fs::write(path, svg)
                .map_err(|e| format!("cannot write the chart to {}: {e}", path.display()))?;
            println!("chart: {}", path.display());
        }
        match current.status {
            EvolutionStatus::Failed => Err(format!(
                "the evolution failed: {}",
                current.error.as_deref().unwrap_or("no reason recorded")
            )
            .into()),
            _ => Ok(()),
        }
    })
}

/// The run's input from the flags; the service checks every value.
fn initialize(args: &EvolveArgs, agent_id: &str) -> Result<InitializeEvolution, BoxError> {
    let mut input = Map::new();
    input.insert("agent_id".into(), json!(agent_id));
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            input.insert(key.into(), v);
        }
    };
    set("alias", args.alias.as_ref().map(|v| json!(v)));
    set("mode", args.mode.as_ref().map(|v| json!(v)));
    set("valset_size", args.valset_size.map(|v| json!(v)));
    set("minibatch_size", args.minibatch_size.map(|v| json!(v)));
    set("window_days", args.window_days.map(|v| json!(v)));
    set(
        "reflection_model",
        args.reflection_model.as_ref().map(|v| json!(v)),
    );
    set("judge_model", args.judge_model.as_ref().map(|v| json!(v)));
    let mut budget = Map::new();
    if let Some(n) = args.max_metric_calls {
        budget.insert("max_metric_calls".into(), json!(n));
    }
    if let Some(c) = args.max_cost_usd {
        budget.insert("max_cost_usd".into(), json!(c));
    }
    if let Some(s) = args.max_seconds {
        budget.insert("max_seconds".into(), json!(s));
    }
    if !budget.is_empty() {
        input.insert("budget".into(), Value::Object(budget));
    }
    serde_json::from_value(Value::Object(input))
        .map_err(|e| format!("invalid flag value: {e} (--mode takes review or auto)").into())
}

fn score(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

fn summary(v: &EvolutionView) -> String {
    format!(
        "iteration {} · seed {} · best {} · USD {:.4}",
        v.iteration,
        score(v.seed_score),
        score(v.best_score),
        v.spend.cost_usd
    )
}

fn report(v: &EvolutionView, took: Duration) {
    println!(
        "evolution {} {}: validation {} -> {} in {} iterations, {} of {} metric calls, {} model calls, {} tokens, USD {:.4}, {:.0?}",
        v.evolution_id,
        match v.status {
            EvolutionStatus::Running => "running",
            EvolutionStatus::Completed => "completed",
            EvolutionStatus::Failed => "failed",
            EvolutionStatus::Cancelled => "cancelled",
        },
        score(v.seed_score),
        score(v.best_score),
        v.iteration,
        v.spend.metric_calls,
        v.budget.max_metric_calls,
        v.spend.llm_calls,
        v.spend.tokens,
        v.spend.cost_usd,
        took
    );
    if let Some(reason) = &v.stop_reason {
        println!("stopped: {reason}");
    }
    match &v.winner {
        Some(w) => {
            let out = match (&w.proposal_id, &w.canary_id) {
                (Some(p), _) => format!("proposal {p} (approve it with review_proposal)"),
                (None, Some(c)) => format!("canary {c} on alias {}", v.alias),
                (None, None) => format!(
                    "not rolled out: {}",
                    w.rollout_error.as_deref().unwrap_or("unknown reason")
                ),
            };
            println!(
                "winner: version {} (+{:.3} over the seed), {out}",
                w.version, w.improvement
            );
        }
        None if v.status == EvolutionStatus::Completed => {
            println!("no winner: the seed stays as it is");
        }
        None => {}
    }
}
