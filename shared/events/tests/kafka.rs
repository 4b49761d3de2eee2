//! The producer and topic administration against a real Kafka-protocol broker
//! (`AOP_TEST_KAFKA=127.0.0.1:PORT`; `scripts/test-all` runs these against noida-db and Tansu).

use aop_test_support::{Service, service};
use std::collections::HashMap;
use std::time::Duration;

use aop_core::{AgentId, DomainEvent, EventSink, EventType};
use aop_events::kafka::{ClientSettings, KafkaSink, TopicOutcome, TopicSpec, apply_topics};
use aop_events::{CloudEvent, Topics};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};

fn broker() -> Option<String> {
    service(Service::Kafka)
}

fn unique_topics() -> Topics {
    let p = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    Topics {
        agent_events: format!("{p}.agent_events"),
        feedback_events: format!("{p}.feedback_events"),
        evolution_events: format!("{p}.evolution_events"),
    }
}

fn specs(topics: &Topics) -> Vec<TopicSpec> {
    topics
        .all()
        .into_iter()
        .map(|name| TopicSpec {
            name,
            partitions: 4,
            replication: 1,
            retention_ms: 7 * 24 * 3600 * 1000,
        })
        .collect()
}

/// A consumer in a group of its own reading `topics` from their beginning.
fn reader(servers: &str, topics: &[&str]) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set(
            "group.id",
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    consumer
}

fn event(kind: EventType, agent: &AgentId, n: i64) -> DomainEvent {
    let mut event = aop_core::samples::event(kind, agent);
    event.time = 1_795_759_200_000 + n;
    event
}

#[tokio::test]
async fn events_reach_their_topics_keyed_by_agent_in_order() {
    let Some(servers) = broker() else { return };
    let settings = ClientSettings::new(&servers);
    let topics = unique_topics();
    let created = apply_topics(&settings, &specs(&topics)).await.unwrap();
    assert!(
        created.iter().all(|(_, o)| *o == TopicOutcome::Created),
        "{created:?}"
    );
    let again = apply_topics(&settings, &specs(&topics)).await.unwrap();
    assert!(
        again.iter().all(|(_, o)| *o == TopicOutcome::Unchanged),
        "{again:?}"
    );

    let a = AgentId::generate();
    let b = AgentId::generate();
    let mut sent = Vec::new();
    for n in 0..5 {
        let kind = if n % 2 == 0 {
            EventType::InteractionCompleted
        } else {
            EventType::FeedbackSubmitted
        };
        sent.push(event(kind, &a, n));
        sent.push(event(EventType::AgentVersionCreated, &b, n));
    }
    let sink = KafkaSink::new(settings.clone(), topics.clone()).unwrap();
    let delivery = sink.deliver(&sent).await;
    assert_eq!(delivery.error, None);
    assert_eq!(delivery.count(), sent.len());

    let consumer = reader(&servers, &[&topics.agent_events, &topics.feedback_events]);
    let mut received: HashMap<(String, String), Vec<(i64, DomainEvent)>> = HashMap::new();
    let mut count = 0;
    while count < sent.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("all events arrive within 30 s")
            .unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let decoded = CloudEvent::decode(message.payload().unwrap()).unwrap();
        assert_eq!(
            decoded.subject.as_str(),
            key,
            "the record key is the agent id"
        );
        assert_eq!(
            message.topic(),
            topics.topic(decoded.event_type().stream()),
            "{} goes to its stream's topic",
            decoded.event_type().as_str()
        );
        let ce_type = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ce_type"))
            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()));
        assert_eq!(ce_type.as_deref(), Some(decoded.event_type().as_str()));
        received
            .entry((message.topic().to_owned(), key))
            .or_default()
            .push((message.offset(), decoded));
        count += 1;
    }
    consumer.unsubscribe();
    for ((topic, key), mut events) in received {
        events.sort_by_key(|(offset, _)| *offset);
        let got: Vec<&DomainEvent> = events.iter().map(|(_, e)| e).collect();
        let expected: Vec<&DomainEvent> = sent
            .iter()
            .filter(|e| e.subject.as_str() == key && topics.topic(e.event_type().stream()) == topic)
            .collect();
        assert_eq!(got, expected, "per-agent order on {topic}");
    }
}

#[tokio::test]
async fn an_unreachable_broker_is_reported_not_waited_on_forever() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut settings = ClientSettings::new(format!("127.0.0.1:{port}"));
    settings.delivery_timeout = Duration::from_secs(2);
    let sink = KafkaSink::new(settings, Topics::default()).unwrap();
    let agent = AgentId::generate();
    let started = std::time::Instant::now();
    let delivery = sink
        .deliver(&[event(EventType::AgentCreated, &agent, 1)])
        .await;
    assert_eq!(delivery.delivered, [false]);
    assert!(delivery.error.is_some());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the delivery timeout"
    );
}

/// Dead letters written while the store was down go back to their topic once each, in order,
/// keyed as before and without the dead-letter headers; a second re-drive sends only what was
/// dead-lettered since.
#[tokio::test]
async fn re_driven_dead_letters_go_back_once_each() {
    use aop_events::msk::{DeadLetter, DeadLetters};
    let Some(servers) = broker() else { return };
    let topics = unique_topics();
    let settings = ClientSettings::new(servers.clone());
    apply_topics(&settings, &specs(&topics)).await.unwrap();
    let topic = topics.feedback_events.clone();
    let dead = aop_events::kafka::KafkaDeadLetters::new(&settings).unwrap();
    let letter = |n: i64| DeadLetter {
        topic: topic.clone(),
        partition: 0,
        offset: n,
        key: Some(format!("agt_{}", n % 2).into_bytes()),
        value: format!("{{\"letter\":{n}}}").into_bytes(),
        error: "cannot apply event now: store unavailable".into(),
        attempts: 3,
    };
    for n in 0..3 {
        dead.send(&letter(n)).await.unwrap();
    }
    let timeout = Duration::from_secs(30);
    let sent = aop_events::redrive::redrive(&settings, &topic, timeout)
        .await
        .unwrap();
    assert_eq!(sent, 3);
    assert_eq!(
        aop_events::redrive::redrive(&settings, &topic, timeout)
            .await
            .unwrap(),
        0,
        "a second run sends nothing already sent"
    );
    dead.send(&letter(3)).await.unwrap();
    assert_eq!(
        aop_events::redrive::redrive(&settings, &topic, timeout)
            .await
            .unwrap(),
        1
    );

    let consumer = reader(&servers, &[&topic]);
    let mut values: Vec<(String, String)> = Vec::new();
    while values.len() < 4 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the re-driven letters arrive within 30 s")
            .unwrap();
        let headers: Vec<String> = message
            .headers()
            .map(|h| h.iter().map(|h| h.key.to_owned()).collect())
            .unwrap_or_default();
        assert!(
            headers.iter().all(|k| !k.starts_with("aop_")),
            "dead-letter headers stay behind: {headers:?}"
        );
        values.push((
            String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
            String::from_utf8(message.payload().unwrap().to_vec()).unwrap(),
        ));
    }
    values.sort();
    assert_eq!(
        values,
        [
            ("agt_0".to_owned(), "{\"letter\":0}".to_owned()),
            ("agt_0".to_owned(), "{\"letter\":2}".to_owned()),
            ("agt_1".to_owned(), "{\"letter\":1}".to_owned()),
            ("agt_1".to_owned(), "{\"letter\":3}".to_owned()),
        ]
    );
}
