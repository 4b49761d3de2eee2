//! The outbox relay as an AWS Lambda function on a schedule (EventBridge): publishes every event
//! still in the outbox to Kafka, oldest first, and answers how many it published and how many
//! are left.

use aop_runtime::roles::relay::RelayRole;
use aop_runtime::{Config, Overrides, telemetry};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::load(None, &Overrides::default())?;
    telemetry::init(config.log_level())?;
    let (config, role) = RelayRole::start(config).await?;
    let relay = role.relay;
    let outbox = role.outbox;
    let environment = config.environment().to_owned();
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let relay = relay.clone();
        let outbox = outbox.clone();
        let environment = environment.clone();
        async move {
            let published = relay.drain().await?;
            let backlog = outbox.backlog().await?;
            // The template alarms on the backlog; the counts go to CloudWatch as EMF.
            telemetry::emit_emf(
                &environment,
                &[
                    ("aop_events_published_total", published as f64),
                    ("aop_outbox_backlog", backlog as f64),
                ],
            );
            tracing::info!(published, backlog, "outbox relayed");
            Ok::<_, Error>(json!({"published": published, "backlog": backlog}))
        }
    }))
    .await
}
