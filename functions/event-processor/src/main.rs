//! The event processor as an AWS Lambda function on the MSK event source: each batch goes
//! through `aop_events::msk::process_batch`, poison records to `<topic>.dlq`, and the response
//! lists the records to deliver again (`ReportBatchItemFailures`).

use std::sync::Arc;

use aop_events::kafka::KafkaDeadLetters;
use aop_events::msk::process_batch;
use aop_runtime::platform::kafka_settings;
use aop_runtime::{Config, Overrides, telemetry};
use aws_lambda_events::event::kafka::KafkaEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::load(None, &Overrides::default())?;
    telemetry::init(&config.log_level)?;
    if config.kafka.bootstrap_servers.is_none() && config.kafka.cluster_arn.is_none() {
        return Err(
            "kafka.bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS) or kafka.cluster_arn \
             (MSK_CLUSTER_ARN) must be set: dead letters go to Kafka"
                .into(),
        );
    }
    // Looks the brokers up from the cluster ARN when no bootstrap servers are given.
    let (config, platform) = aop_runtime::start(config).await?;
    let dead = Arc::new(KafkaDeadLetters::new(&kafka_settings(&config)?)?);
    let processor = platform.processor.clone();
    tracing::info!(
        store = platform.store_description(),
        "event-processor function ready"
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KafkaEvent>| {
        let processor = processor.clone();
        let dead = dead.clone();
        async move { Ok::<_, Error>(process_batch(&event.payload, &processor, dead.as_ref()).await) }
    }))
    .await
}
