//! The event processor as an AWS Lambda function on the MSK event source: each batch goes
//! through `aop_events::msk::process_batch` to the platform's event handlers (fitness, the
//! deployment controller), poison records to `<topic>.dlq`, and the response lists the records
//! to deliver again (`ReportBatchItemFailures`). A scheduled event runs the scheduled pass:
//! canaries no traffic reached are checked, proposals past their time expire, and evolution
//! runs nothing moved for a while are asked for their iteration again.

use std::sync::Arc;

use aop_events::msk::process_batch_counted;
use aop_runtime::roles::processor::ProcessorRole;
use aop_runtime::{Config, Overrides, telemetry};
use aws_lambda_events::event::kafka::KafkaEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::load(None, &Overrides::default())?;
    telemetry::init(config.log_level())?;
    // Looks the brokers up from the cluster ARN when no bootstrap servers are given.
    let (config, role) = ProcessorRole::start(config).await?;
    let handlers = Arc::new(role.handlers);
    let dead = Arc::new(role.dead_letters);
    let environment = config.environment().to_owned();
    tracing::info!(
        store = role.stores.description(),
        "event-processor function ready"
    );
    let schedule = role.schedule.clone();
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (handlers, dead, schedule) = (handlers.clone(), dead.clone(), schedule.clone());
        let environment = environment.clone();
        async move {
            // Two triggers: the MSK event source, and the schedule (EventBridge) that checks
            // canaries no traffic reached and expires proposals.
            if event.payload.get("eventSource").and_then(Value::as_str) != Some("aws:kafka") {
                let pass = schedule.run_once().await?;
                return Ok::<_, Error>(json!({
                    "canaries_decided": pass.canaries_decided,
                    "proposals_expired": pass.proposals_expired,
                    "evolutions_resumed": pass.evolutions_resumed,
                    "evolutions_started": pass.evolutions_started,
                }));
            }
            let batch: KafkaEvent = serde_json::from_value(event.payload)?;
            let (response, stats) =
                process_batch_counted(&batch, handlers.as_ref(), dead.as_ref()).await;
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
            Ok(serde_json::to_value(response)?)
        }
    }))
    .await
}
