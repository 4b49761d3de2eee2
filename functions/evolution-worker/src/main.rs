//! The evolution worker as an AWS Lambda function on the MSK event source (`evolution_events`):
//! each `evolution.generation.requested` in a batch runs one iteration of its evolution run
//! through `aop_events::msk::process_batch` (model calls, minutes at most: a step stops starting
//! calls after `AOP_EVOLUTION_STEP_SECONDS` and asks for a continuation), poison records go to
//! `<topic>.dlq`, and the response lists the records to deliver again
//! (`ReportBatchItemFailures`). A request for a step already taken, or for a run that is gone,
//! changes nothing. Runs that stall are asked for again by the event processor's schedule.

use std::sync::Arc;

use aop_events::msk::process_batch_counted;
use aop_runtime::roles::evolution::EvolutionRole;
use aop_runtime::{Config, Overrides, telemetry};
use aws_lambda_events::event::kafka::KafkaEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::load(None, &Overrides::default())?;
    telemetry::init(config.log_level())?;
    // Looks the brokers up from the cluster ARN when no bootstrap servers are given.
    let (config, role) = EvolutionRole::start(config).await?;
    let worker = Arc::new(role.worker);
    let dead = Arc::new(role.dead_letters);
    let environment = config.environment().to_owned();
    tracing::info!(
        store = role.stores.description(),
        "evolution-worker function ready"
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KafkaEvent>| {
        let (worker, dead) = (worker.clone(), dead.clone());
        let environment = environment.clone();
        async move {
            let (response, stats) =
                process_batch_counted(&event.payload, worker.as_ref(), dead.as_ref()).await;
            // The template alarms on dead letters; the counts go to CloudWatch as EMF.
            let totals = stats
                .by_topic
                .values()
                .fold((0, 0, 0), |t, (c, f, d)| (t.0 + c, t.1 + f, t.2 + d));
            telemetry::emit_emf(
                &environment,
                &[
                    ("aop_events_consumed_total", totals.0 as f64),
                    ("aop_events_failed_total", totals.1 as f64),
                    ("aop_events_dead_lettered_total", totals.2 as f64),
                ],
            );
            Ok::<_, Error>(response)
        }
    }))
    .await
}
