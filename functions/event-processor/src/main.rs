//! The event processor as an AWS Lambda function on the MSK event source: each batch goes
//! through `aop_events::msk::process_batch` to the platform's event handlers, poison records to
//! `<topic>.dlq`, and the response lists the records to deliver again
//! (`ReportBatchItemFailures`).

use std::sync::Arc;

use aop_events::msk::process_batch_counted;
use aop_runtime::roles::processor::ProcessorRole;
use aop_runtime::{Config, Overrides, telemetry};
use aws_lambda_events::event::kafka::KafkaEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};

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
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KafkaEvent>| {
        let handlers = handlers.clone();
        let dead = dead.clone();
        let environment = environment.clone();
        async move {
            let (response, stats) =
                process_batch_counted(&event.payload, handlers.as_ref(), dead.as_ref()).await;
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
