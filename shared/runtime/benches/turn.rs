//! Per-turn platform overhead: the time a `run_agent` turn spends outside the model call.
//! The OpenAI-compatible test server answers at once over loopback HTTP; the same request is
//! also timed straight through the model adapter, and the difference is our code per turn
//! (validation, alias resolution, store reads, the interaction write, metrics).
//!
//! `cargo bench -p aop-runtime --bench turn`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aop_core::CreateAgent;
use aop_core::llm::{ChatMessage, ChatModel, ChatRequest};
use aop_core::services::conversation::RunAgent;
use aop_core::session::Role;
use aop_llm::{OpenAiChatModel, OpenAiSettings};
use aop_runtime::{Config, Overrides, Platform};
use openai_test_server::TestLlm;

const TURNS: usize = 2_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let llm = TestLlm::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let env: BTreeMap<String, String> = [
            ("OPENAI_BASE_URL", llm.base_url()),
            ("OPENAI_API_KEY", "sk-bench".to_owned()),
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("LOG_LEVEL", "warn".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let config = Config::from_sources(None, &env, &Overrides::default()).expect("config");
        let platform = Platform::build(&config).expect("platform");
        let agent = platform
            .mcp
            .agents
            .create(CreateAgent {
                name: "bench".into(),
                instructions: "You answer benchmark questions.".into(),
                ..CreateAgent::default()
            })
            .await
            .expect("agent")
            .agent
            .agent_id;

        let model = OpenAiChatModel::new(OpenAiSettings::new(
            llm.base_url(),
            Some("sk-bench".to_owned().into()),
        ))
        .expect("model");
        let request = ChatRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![
                ChatMessage::new(Role::System, "You answer benchmark questions."),
                ChatMessage::new(Role::User, "what is the time?"),
            ],
            tools: Vec::new(),
            temperature: None,
            top_p: None,
            max_tokens: None,
        };
        let far = || Instant::now() + Duration::from_secs(30);
        for _ in 0..200 {
            model.complete(request.clone(), far()).await.expect("warm-up call");
            platform
                .mcp
                .conversations
                .run_agent(
                    RunAgent { caller: None, agent_id: agent.clone(), alias: None, input: "warm".into(), user_id: None },
                    None,
                )
                .await
                .expect("warm-up turn");
        }

        let mut model_ms = Vec::with_capacity(TURNS);
        let mut turn_ms = Vec::with_capacity(TURNS);
        for _ in 0..TURNS {
            let t = Instant::now();
            model.complete(request.clone(), far()).await.expect("model call");
            model_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            platform
                .mcp
                .conversations
                .run_agent(
                    RunAgent { caller: None, agent_id: agent.clone(), alias: None, input: "what is the time?".into(), user_id: None },
                    None,
                )
                .await
                .expect("turn");
            turn_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let (model_p50, model_p99) = summary(model_ms);
        let (turn_p50, turn_p99) = summary(turn_ms);
        println!("model call alone (loopback test server): p50 {model_p50:.3} ms, p99 {model_p99:.3} ms ({TURNS} calls)");
        println!("run_agent turn:                          p50 {turn_p50:.3} ms, p99 {turn_p99:.3} ms ({TURNS} turns)");
        println!("platform overhead per turn (p50 difference): {:.3} ms", turn_p50 - model_p50);
    });
}
