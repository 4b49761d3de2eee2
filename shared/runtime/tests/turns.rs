//! Agent turns end to end inside the platform: the real async-openai client talks HTTP to the
//! OpenAI-compatible test server; sessions, delegation, retries, refusals, deadlines, interaction
//! records and metrics are checked on what the platform stored and sent.

use std::collections::BTreeMap;

use aop_core::services::conversation::{ConversationService, RunAgent, SendMessage, StartSession};
use aop_core::session::InteractionStatus;
use aop_core::{AgentId, Capability, CreateAgent, ServiceError, UpdateAgent};
use aop_runtime::{Config, Overrides, Platform};
use openai_test_server::{Reply, TestLlm};
use serde_json::json;

const KEY: &str = "sk-turn-tests-secret";

struct Setup {
    platform: Platform,
    llm: TestLlm,
    _dir: tempfile::TempDir,
}

async fn setup(extra: &[(&str, &str)]) -> Setup {
    let llm = TestLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env: BTreeMap<String, String> = [
        ("OPENAI_BASE_URL", llm.base_url()),
        ("OPENAI_API_KEY", KEY.to_owned()),
        ("AOP_DATA_DIR", dir.path().display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let config = Config::from_sources(None, &env, &Overrides::default()).unwrap();
    Setup {
        platform: Platform::build(&config).unwrap(),
        llm,
        _dir: dir,
    }
}

fn delegate(name: &str, to: &AgentId) -> Capability {
    Capability {
        name: name.into(),
        description: format!("ask {to}"),
        parameters: None,
        effectiveness: None,
        delegate_to: Some(to.clone()),
    }
}

async fn agent(s: &Setup, name: &str, model: &str, capabilities: Vec<Capability>) -> AgentId {
    s.platform
        .mcp
        .agents
        .create(CreateAgent {
            name: name.into(),
            instructions: format!("You are {name}."),
            model: Some(model.into()),
            capabilities,
            ..CreateAgent::default()
        })
        .await
        .unwrap()
        .agent
        .agent_id
}

#[tokio::test]
async fn a_session_delegates_keeps_history_and_records_every_turn() {
    let s = setup(&[]).await;
    let expert = agent(&s, "expert", "gpt-4o-mini", vec![]).await;
    let front = agent(
        &s,
        "front",
        "gpt-4o-mini",
        vec![delegate("ask_expert", &expert)],
    )
    .await;
    let conv = &s.platform.mcp.conversations;
    let session = conv
        .start_session(StartSession {
            agent_id: front.clone(),
            alias: None,
            user_id: Some("u-1".into()),
            context: Some(json!({"channel": "test"})),
        })
        .await
        .unwrap();

    s.llm.push([
        Reply::tool_call("ask_expert", json!({"input": "What is 2+2?"})),
        Reply::Text {
            content: "4".into(),
            prompt_tokens: 7,
            completion_tokens: 1,
        },
        Reply::Text {
            content: "The expert says 4.".into(),
            prompt_tokens: 40,
            completion_tokens: 5,
        },
    ]);
    let first = conv
        .send_message(
            SendMessage {
                caller: None,
                session_id: session.session_id.clone(),
                content: "Add 2 and 2".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(first.reply, "The expert says 4.");
    assert_eq!(first.tool_calls.len(), 1);
    let call = &first.tool_calls[0];
    assert_eq!(call.delegate_agent_id.as_ref(), Some(&expert));
    assert_eq!(call.result, "4");
    assert!(!call.is_error);
    // Both model calls of the front agent count: 20+40 prompt, 10+5 completion tokens.
    assert_eq!(first.usage.prompt_tokens, 60);
    assert_eq!(first.usage.completion_tokens, 15);
    let cost = first.cost_usd.expect("gpt-4o-mini has a price");
    assert!(
        (cost - (60.0 * 0.15 + 15.0 * 0.60) / 1e6).abs() < 1e-12,
        "{cost}"
    );

    let sent = s.llm.requests();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0].body["tools"][0]["function"]["name"], "ask_expert");
    assert_eq!(sent[1].body["messages"][0]["content"], "You are expert.");
    assert_eq!(sent[1].body["messages"][1]["content"], "What is 2+2?");
    assert_eq!(sent[2].body["messages"][3]["role"], "tool");
    assert_eq!(sent[2].body["messages"][3]["content"], "4");

    s.llm.push([Reply::text("Still 4.")]);
    let second = conv
        .send_message(
            SendMessage {
                caller: None,
                session_id: session.session_id.clone(),
                content: "Sure?".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(second.reply, "Still 4.");
    let history = &s.llm.requests()[3].body["messages"];
    let roles: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(history[1]["content"], "Add 2 and 2");
    assert_eq!(history[2]["content"], "The expert says 4.");

    let messages = conv
        .get_messages(&session.session_id, None, None)
        .await
        .unwrap();
    let texts: Vec<_> = messages.items.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        texts,
        ["Add 2 and 2", "The expert says 4.", "Sure?", "Still 4."]
    );

    let front_turns = conv
        .list_interactions(&front, None, None)
        .await
        .unwrap()
        .items;
    let expert_turns = conv
        .list_interactions(&expert, None, None)
        .await
        .unwrap()
        .items;
    assert_eq!(front_turns.len(), 2);
    assert_eq!(expert_turns.len(), 1);
    assert_eq!(
        expert_turns[0].parent_interaction_id,
        Some(first.interaction_id.clone())
    );
    assert_eq!(expert_turns[0].usage.prompt_tokens, 7);
    assert_eq!(
        call.delegate_interaction_id.as_ref(),
        Some(&expert_turns[0].interaction_id)
    );
    assert!(
        front_turns
            .iter()
            .all(|i| i.status == InteractionStatus::Completed)
    );

    let metrics = s.platform.mcp.metrics.render();
    assert!(
        metrics.contains(&format!(
            "agent_interactions_total{{agent_id=\"{front}\"}} 2"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "agent_interactions_total{{agent_id=\"{expert}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "aop_llm_tokens_total{{agent_id=\"{front}\",kind=\"prompt\"}}"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_rate_limit_then_success_is_retried() {
    let s = setup(&[]).await;
    let id = agent(&s, "patient", "gpt-4o-mini", vec![]).await;
    s.llm.push([Reply::rate_limited(1), Reply::text("made it")]);
    let reply = s
        .platform
        .mcp
        .conversations
        .run_agent(
            RunAgent {
                caller: None,
                agent_id: id,
                alias: None,
                input: "hi".into(),
                user_id: None,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.reply, "made it");
    assert_eq!(s.llm.requests().len(), 2);
}

#[tokio::test]
async fn a_refusal_fails_the_turn_clearly_and_keeps_the_key_out() {
    let s = setup(&[]).await;
    let id = agent(&s, "locked", "gpt-4o-mini", vec![]).await;
    s.llm.push([Reply::Error {
        status: 401,
        message: format!("Incorrect API key provided: {KEY}"),
        code: Some("invalid_api_key".into()),
        retry_after: None,
    }]);
    let err = s
        .platform
        .mcp
        .conversations
        .run_agent(
            RunAgent {
                caller: None,
                agent_id: id.clone(),
                alias: None,
                input: "hi".into(),
                user_id: None,
            },
            None,
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ServiceError::TurnFailed { .. }), "{err:?}");
    assert!(text.contains("refused the request (HTTP 401)"), "{text}");
    assert!(!text.contains(KEY), "{text}");
    let turns = s
        .platform
        .mcp
        .conversations
        .list_interactions(&id, None, None)
        .await
        .unwrap()
        .items;
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].status, InteractionStatus::Failed);
    assert!(!turns[0].error.as_deref().unwrap_or_default().contains(KEY));
}

#[tokio::test]
async fn a_provider_slower_than_the_deadline_fails_the_turn_and_records_it() {
    let s = setup(&[("AOP_TURN_TIMEOUT_SECONDS", "1")]).await;
    let id = agent(&s, "hurried", "gpt-4o-mini", vec![]).await;
    let session = s
        .platform
        .mcp
        .conversations
        .start_session(StartSession {
            agent_id: id.clone(),
            alias: None,
            user_id: None,
            context: None,
        })
        .await
        .unwrap();
    s.llm
        .push([Reply::Delay { millis: 5_000 }, Reply::text("late")]);
    let started = std::time::Instant::now();
    let err = s
        .platform
        .mcp
        .conversations
        .send_message(
            SendMessage {
                caller: None,
                session_id: session.session_id.clone(),
                content: "quick!".into(),
            },
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "stopped at the deadline"
    );
    assert!(err.contains("did not answer within"), "{err}");
    assert!(err.contains("recorded as failed"), "{err}");
    let turns = s
        .platform
        .mcp
        .conversations
        .list_interactions(&id, None, None)
        .await
        .unwrap()
        .items;
    assert_eq!(turns[0].status, InteractionStatus::Failed);
    let messages = s
        .platform
        .mcp
        .conversations
        .get_messages(&session.session_id, None, None)
        .await
        .unwrap();
    assert!(messages.items.is_empty(), "a failed turn adds no messages");
}

#[tokio::test]
async fn delegation_is_bounded_in_depth_and_cycles_are_refused() {
    let s = setup(&[("AOP_MAX_DELEGATION_DEPTH", "1")]).await;
    let c = agent(&s, "c", "llama3", vec![]).await;
    let b = agent(&s, "b", "llama3", vec![delegate("ask_c", &c)]).await;
    let a = agent(&s, "a", "llama3", vec![delegate("ask_b", &b)]).await;
    s.llm.push([
        Reply::tool_call("ask_b", json!({"input": "go deeper"})),
        Reply::tool_call("ask_c", json!({"input": "deeper still"})),
        Reply::text("b answers alone"),
        Reply::text("a answers"),
    ]);
    let reply = s
        .platform
        .mcp
        .conversations
        .run_agent(
            RunAgent {
                caller: None,
                agent_id: a.clone(),
                alias: None,
                input: "hi".into(),
                user_id: None,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.reply, "a answers");
    assert_eq!(
        reply.cost_usd, None,
        "llama3 has no price: its cost is unknown, not zero"
    );
    let b_turn = &s
        .platform
        .mcp
        .conversations
        .list_interactions(&b, None, None)
        .await
        .unwrap()
        .items[0];
    assert!(b_turn.tool_calls[0].is_error);
    assert_eq!(
        b_turn.tool_calls[0].result,
        "delegation depth limit of 1 reached"
    );
    assert!(
        s.platform
            .mcp
            .conversations
            .list_interactions(&c, None, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A cycle through updates is refused where it is made.
    let err = s
        .platform
        .mcp
        .agents
        .update(UpdateAgent {
            agent_id: c.clone(),
            expected_version: None,
            instructions: None,
            model: None,
            parameters: None,
            capabilities: Some(vec![delegate("ask_a", &a)]),
            knowledge_sources: None,
            change_summary: None,
            created_by: None,
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("delegation cycle: {c} -> {a} -> {b} -> {c}")),
        "{err}"
    );
}

async fn session_of(s: &Setup, agent_id: &AgentId) -> aop_core::session::Session {
    s.platform
        .mcp
        .conversations
        .start_session(StartSession {
            agent_id: agent_id.clone(),
            alias: None,
            user_id: None,
            context: None,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_turn_that_loses_the_race_for_its_message_numbers_goes_after_the_winner() {
    let s = setup(&[]).await;
    let id = agent(&s, "busy", "gpt-4o-mini", vec![]).await;
    let session = session_of(&s, &id).await;
    // The first message's model call is slow; a second message overtakes it and commits first.
    s.llm.push([
        Reply::Delay { millis: 600 },
        Reply::text("quick answer"),
        Reply::text("slow answer"),
    ]);
    let conv = s.platform.mcp.conversations.clone();
    let send = |content: &str| {
        let conv = conv.clone();
        let input = SendMessage {
            caller: None,
            session_id: session.session_id.clone(),
            content: content.into(),
        };
        tokio::spawn(async move { conv.send_message(input, None).await })
    };
    let slow = send("slow question");
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let quick = send("quick question");
    let quick = quick.await.unwrap().unwrap();
    let slow = slow.await.unwrap().expect("the slow turn is recorded too");
    assert_eq!(quick.reply, "quick answer");
    assert_eq!(slow.reply, "slow answer");
    let messages = conv
        .get_messages(&session.session_id, None, Some(10))
        .await
        .unwrap()
        .items;
    let said: Vec<(u32, &str)> = messages
        .iter()
        .map(|m| (m.seq, m.content.as_str()))
        .collect();
    assert_eq!(
        said,
        [
            (1, "quick question"),
            (2, "quick answer"),
            (3, "slow question"),
            (4, "slow answer")
        ]
    );
}

#[tokio::test]
async fn a_session_ended_during_a_turn_still_records_the_paid_interaction() {
    let s = setup(&[]).await;
    let id = agent(&s, "late", "gpt-4o-mini", vec![]).await;
    let session = session_of(&s, &id).await;
    s.llm
        .push([Reply::Delay { millis: 500 }, Reply::text("too late")]);
    let conv = s.platform.mcp.conversations.clone();
    let input = SendMessage {
        caller: None,
        session_id: session.session_id.clone(),
        content: "are you there?".into(),
    };
    let pending = {
        let conv = conv.clone();
        tokio::spawn(async move { conv.send_message(input, None).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    conv.end_session(&session.session_id, None).await.unwrap();
    let err = pending.await.unwrap().unwrap_err();
    let ServiceError::Conflict(message) = err else {
        panic!("expected a conflict, got {err}");
    };
    assert!(
        message.contains("ended while the agent was answering"),
        "{message}"
    );
    let interactions = conv
        .list_interactions(&id, None, Some(10))
        .await
        .unwrap()
        .items;
    assert_eq!(interactions.len(), 1, "the turn's cost is kept");
    assert_eq!(interactions[0].output.as_deref(), Some("too late"));
    assert!(message.contains(interactions[0].interaction_id.as_str()));
    let messages = conv
        .get_messages(&session.session_id, None, Some(10))
        .await
        .unwrap()
        .items;
    assert!(
        messages.is_empty(),
        "nothing was added to the ended session"
    );
}

/// One turn of `agent_id` asked for by `caller`.
async fn run_as(
    conv: &ConversationService,
    agent_id: &AgentId,
    caller: &str,
) -> Result<aop_core::services::conversation::TurnReply, ServiceError> {
    conv.run_agent(
        RunAgent {
            caller: Some(aop_core::principal::Principal::named(caller)),
            agent_id: agent_id.clone(),
            alias: None,
            input: "hi".into(),
            user_id: None,
        },
        None,
    )
    .await
}

/// A turn that costs USD 0.15 with gpt-4o-mini's price (0.15 per million prompt tokens).
fn costly(content: &str) -> Reply {
    Reply::Text {
        content: content.into(),
        prompt_tokens: 1_000_000,
        completion_tokens: 0,
    }
}

#[tokio::test]
async fn spend_caps_refuse_turns_before_the_model_is_called() {
    let s = setup(&[]).await;
    let writer = agent(&s, "writer", "gpt-4o-mini", vec![]).await;
    let editor = agent(&s, "editor", "gpt-4o-mini", vec![]).await;
    let frozen = agent(&s, "frozen", "gpt-4o-mini", vec![]).await;
    let front = agent(
        &s,
        "front",
        "gpt-4o-mini",
        vec![delegate("ask_frozen", &frozen)],
    )
    .await;
    let env: BTreeMap<String, String> = [
        ("AOP_DAILY_COST_CAP_USD", "0.2".to_owned()),
        ("AOP_CALLER_DAILY_COST_CAP_USD", "0.4".to_owned()),
        ("AOP_AGENT_COST_CAPS", format!("{frozen}=0")),
        ("AOP_CALLER_COST_CAPS", "erin=0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let caps = Config::from_sources(None, &env, &Overrides::default())
        .unwrap()
        .agents
        .spend_caps();
    let conv = &s.platform.mcp.conversations.clone().with_spend_caps(caps);

    // The agent's cap: spent 0, then 0.15 (both under 0.2), then 0.30: refused.
    s.llm.push([costly("one"), costly("two")]);
    let first = run_as(conv, &writer, "alice").await.unwrap();
    assert!((first.cost_usd.unwrap() - 0.15).abs() < 1e-9, "{first:?}");
    run_as(conv, &writer, "bob").await.unwrap();
    let calls = s.llm.requests().len();
    let err = run_as(conv, &writer, "carol").await.unwrap_err();
    assert!(matches!(err, ServiceError::SpendCapReached(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "daily spend cap reached: agent '{writer}' has spent USD 0.3000 today (UTC) of its \
             daily cap of USD 0.20"
        )),
        "{text}"
    );
    assert_eq!(
        s.llm.requests().len(),
        calls,
        "no model call for a refused turn"
    );

    // An agent with a cap of its own: 0 takes no turns at all, delegated ones included.
    let err = run_as(conv, &frozen, "dave").await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("agent '{frozen}' has spent USD 0.0000")),
        "{err}"
    );
    s.llm.push([
        Reply::tool_call("ask_frozen", json!({"input": "help"})),
        Reply::text("front answers alone"),
    ]);
    let reply = run_as(conv, &front, "dave").await.unwrap();
    assert_eq!(reply.reply, "front answers alone");
    assert!(reply.tool_calls[0].is_error);
    assert!(
        reply.tool_calls[0]
            .result
            .contains(&format!("daily spend cap reached: agent '{frozen}'")),
        "{}",
        reply.tool_calls[0].result
    );

    // The caller's cap counts every agent it asked: alice spent 0.15 on writer; 0.15 and 0.15
    // more on editor reach 0.45 > 0.4, and the next turn is refused, for alice only.
    s.llm.push([costly("e1"), costly("e2"), costly("e3")]);
    let stored = run_as(conv, &editor, "alice").await.unwrap();
    let interaction = s
        .platform
        .mcp
        .conversations
        .list_interactions(&editor, None, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|i| i.interaction_id == stored.interaction_id)
        .unwrap();
    assert_eq!(
        interaction.invoked_by.as_ref().map(|p| p.as_str()),
        Some("alice"),
        "the caller is recorded with the turn"
    );
    conv.run_agent(
        RunAgent {
            caller: Some(aop_core::principal::Principal::named("alice")),
            agent_id: editor.clone(),
            alias: None,
            input: "again".into(),
            user_id: None,
        },
        None,
    )
    .await
    .unwrap();
    let err = run_as(conv, &front, "alice").await.unwrap_err().to_string();
    assert!(
        err.contains(
            "caller 'alice' has spent USD 0.4500 today (UTC) of its daily cap of USD 0.40"
        ),
        "{err}"
    );
    // bob, under his own cap, still meets editor's: it spent 0.30 today.
    let err = run_as(conv, &editor, "bob").await.unwrap_err().to_string();
    assert!(err.contains(&format!("agent '{editor}'")), "{err}");
    // A caller with a cap of its own: erin may spend nothing.
    let err = run_as(conv, &front, "erin").await.unwrap_err().to_string();
    assert!(
        err.contains("caller 'erin' has spent USD 0.0000 today (UTC) of its daily cap of USD 0.00"),
        "{err}"
    );
}
