//! The real async-openai client against the OpenAI-compatible test server: the wire format,
//! retries inside the deadline, refusals reported at once, and the API key kept out of errors.

use std::time::{Duration, Instant};

use aop_core::llm::{ChatMessage, ChatModel, ChatRequest, LlmError, ToolSpec};
use aop_core::session::Role;
use aop_llm::{OpenAiChatModel, OpenAiSettings};
use openai_test_server::{Reply, TestLlm};
use secrecy::SecretString;
use serde_json::json;

const KEY: &str = "sk-test-very-secret-key";

fn model(server: &TestLlm) -> OpenAiChatModel {
    let mut settings = OpenAiSettings::new(server.base_url(), Some(SecretString::from(KEY)));
    settings.base_backoff = Duration::from_millis(20);
    OpenAiChatModel::new(settings).unwrap()
}

fn request() -> ChatRequest {
    ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![
            ChatMessage::new(Role::System, "You are terse."),
            ChatMessage::new(Role::User, "Weather in Oslo?"),
        ],
        tools: vec![ToolSpec {
            name: "ask_weather".into(),
            description: "Ask the weather agent".into(),
            parameters: json!({"type": "object", "properties": {"input": {"type": "string"}}}),
        }],
        temperature: Some(0.5),
        top_p: Some(0.9),
        max_tokens: Some(128),
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

#[tokio::test]
async fn a_completion_round_trips_in_the_wire_format() {
    let server = TestLlm::start().await;
    server.push([Reply::Text {
        content: "Cold.".into(),
        prompt_tokens: 31,
        completion_tokens: 2,
    }]);
    let answer = model(&server).complete(request(), soon()).await.unwrap();
    assert_eq!(answer.content.as_deref(), Some("Cold."));
    assert_eq!(answer.usage.prompt_tokens, 31);
    assert_eq!(answer.usage.completion_tokens, 2);
    assert_eq!(answer.model, "gpt-4o-mini");

    let sent = &server.requests()[0];
    assert_eq!(
        sent.authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    let body = &sent.body;
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "Weather in Oslo?");
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "ask_weather");
    assert_eq!(body["max_tokens"], 128);
    assert!((body["temperature"].as_f64().unwrap() - 0.5).abs() < 1e-6);
}

#[tokio::test]
async fn tool_calls_and_their_results_travel_both_ways() {
    let server = TestLlm::start().await;
    server.push([Reply::tool_call("ask_weather", json!({"input": "Oslo"}))]);
    let m = model(&server);
    let answer = m.complete(request(), soon()).await.unwrap();
    assert_eq!(answer.tool_calls.len(), 1);
    let call = &answer.tool_calls[0];
    assert_eq!(call.name, "ask_weather");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&call.arguments).unwrap(),
        json!({"input": "Oslo"})
    );

    let mut follow_up = request();
    let mut assistant = ChatMessage::new(Role::Assistant, "");
    assistant.tool_calls = answer.tool_calls.clone();
    follow_up.messages.push(assistant);
    follow_up
        .messages
        .push(ChatMessage::tool_result(&call.id, "-3 C"));
    m.complete(follow_up, soon()).await.unwrap();
    let body = &server.requests()[1].body;
    assert_eq!(body["messages"][2]["tool_calls"][0]["id"], call.id.as_str());
    assert_eq!(body["messages"][3]["role"], "tool");
    assert_eq!(body["messages"][3]["tool_call_id"], call.id.as_str());
    assert_eq!(body["messages"][3]["content"], "-3 C");
}

#[tokio::test]
async fn a_rate_limit_is_retried_after_the_time_it_asks_for() {
    let server = TestLlm::start().await;
    server.push([Reply::rate_limited(1), Reply::text("finally")]);
    let started = Instant::now();
    let answer = model(&server).complete(request(), soon()).await.unwrap();
    assert_eq!(answer.content.as_deref(), Some("finally"));
    assert_eq!(server.requests().len(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was honoured"
    );
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_attempts_run_out() {
    let server = TestLlm::start().await;
    server.push([Reply::error(502, "bad gateway"), Reply::text("recovered")]);
    let m = model(&server);
    assert_eq!(
        m.complete(request(), soon())
            .await
            .unwrap()
            .content
            .as_deref(),
        Some("recovered")
    );
    server.push((0..4).map(|_| Reply::error(503, "overloaded")));
    match m.complete(request(), soon()).await.unwrap_err() {
        LlmError::Unavailable { attempts, message } => {
            assert_eq!(attempts, 4);
            assert_eq!(message, "overloaded");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refusal_is_reported_at_once_without_the_key() {
    let server = TestLlm::start().await;
    server.push([Reply::Error {
        status: 401,
        message: format!("Incorrect API key provided: {KEY}"),
        code: Some("invalid_api_key".into()),
        retry_after: None,
    }]);
    let err = model(&server)
        .complete(request(), soon())
        .await
        .unwrap_err();
    assert_eq!(server.requests().len(), 1, "a 401 is not retried");
    match &err {
        LlmError::Rejected { status, message } => {
            assert_eq!(*status, 401);
            assert_eq!(message, "the LLM provider refused the API key");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    let text = format!("{err} {err:?}");
    assert!(!text.contains(KEY), "the key leaked: {text}");
}

#[tokio::test]
async fn a_slow_provider_hits_the_deadline() {
    let server = TestLlm::start().await;
    server.push([Reply::Delay { millis: 3_000 }, Reply::text("too late")]);
    let started = Instant::now();
    let err = model(&server)
        .complete(request(), Instant::now() + Duration::from_millis(400))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Timeout(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up at the deadline"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_within_the_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut settings = OpenAiSettings::new(format!("http://127.0.0.1:{port}/v1"), None);
    settings.base_backoff = Duration::from_millis(20);
    let m = OpenAiChatModel::new(settings).unwrap();
    let started = Instant::now();
    let err = m
        .complete(request(), Instant::now() + Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LlmError::Unavailable { .. } | LlmError::Timeout(_)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("cannot connect") || matches!(err, LlmError::Timeout(_)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
