//! The relay's metrics: events published by topic and the outbox backlog reach `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aop_core::CreateAgent;
use aop_runtime::{Config, Overrides, Platform};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn published_events_and_the_backlog_are_counted_by_topic() {
    let dir = tempfile::tempdir().unwrap();
    let env: BTreeMap<String, String> =
        [("AOP_DATA_DIR".to_owned(), dir.path().display().to_string())].into();
    let config = Config::from_sources(None, &env, &Overrides::default()).unwrap();
    let platform = Platform::build(&config).unwrap();
    let stop = CancellationToken::new();
    let relay = tokio::spawn(platform.in_process_relay().run(stop.clone()));
    for name in ["one", "two"] {
        platform
            .mcp
            .agents
            .create(CreateAgent {
                name: name.into(),
                instructions: "x".into(),
                ..CreateAgent::default()
            })
            .await
            .unwrap();
    }
    // Two agents: each an agent.created and an agent.version.created on agent_events.
    let wanted = r#"aop_events_published_total{topic="agent_events"} 4"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = platform.mcp.metrics.render();
    while !text.contains(wanted) {
        assert!(
            Instant::now() < deadline,
            "metrics never showed the events:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = platform.mcp.metrics.render();
    }
    stop.cancel();
    relay.await.unwrap();
}

#[tokio::test]
async fn events_a_broker_does_not_take_show_as_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let env: BTreeMap<String, String> = [
        ("AOP_DATA_DIR", dir.path().display().to_string()),
        // Nothing listens there: deliveries time out and the events stay in the outbox.
        ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1".to_owned()),
        ("KAFKA_DELIVERY_TIMEOUT_MS", "300".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = Config::from_sources(None, &env, &Overrides::default()).unwrap();
    let platform = Platform::build(&config).unwrap();
    platform
        .mcp
        .agents
        .create(CreateAgent {
            name: "stuck".into(),
            instructions: "x".into(),
            ..CreateAgent::default()
        })
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let relay = tokio::spawn(platform.kafka_relay(&config).unwrap().run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = platform.mcp.metrics.render();
    while !text.contains("aop_outbox_backlog 2") {
        assert!(
            Instant::now() < deadline,
            "the backlog never showed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = platform.mcp.metrics.render();
    }
    assert!(!text.contains("aop_events_published_total{"), "{text}");
    stop.cancel();
    relay.await.unwrap();
}
