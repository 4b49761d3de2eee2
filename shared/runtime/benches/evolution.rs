//! Does evolution make agents better? Three task suites with programmatic checks (extraction
//! into a JSON shape, classification into a fixed label set, arithmetic word problems with a
//! required answer line), each starting from a deliberately plain seed prompt. Per suite: an
//! evolution on a real model (the platform's engine, in process, on the embedded store) with
//! the suite's evaluation cases, then the seed and the evolved instructions on cases the run
//! never saw, scored by the same checks. Prints held-out pass rates, metric and model calls,
//! tokens, cost at list price and wall time.
//!
//! Needs an OpenAI-compatible model at `AOP_BENCH_LLM` (`scripts/bench-evolution` starts the
//! local Qwen2.5-Coder 1.5B and runs this). Settings: `AOP_BENCH_BUDGET` (metric calls per run,
//! default 300), `AOP_BENCH_PATIENCE` (iterations without a new best, default 40), `AOP_BENCH_SUITES` (comma-separated: json,labels,arithmetic), `AOP_BENCH_MODEL`
//! (default `local-model`), `AOP_BENCH_PRICES` (`model=in/out` per million tokens, default the
//! gpt-4o-mini list price for the model).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aop_core::evolution::{Check, EvolutionStatus, checks};
use aop_core::llm::{ChatMessage, ChatModel, ChatRequest};
use aop_core::principal::Principal;
use aop_core::services::evolution::{AddEvalCases, InitializeEvolution, NewEvalCase};
use aop_core::session::Role;
use aop_core::{AgentId, CreateAgent};
use aop_runtime::{Config, Overrides, Platform};
use serde_json::json;

/// Cases per suite the evolution may use (validation + training) and cases held out.
const EVOLVE_CASES: usize = 16;
const HELD_OUT: usize = 24;
const VALSET: usize = 8;
const MINIBATCH: usize = 3;

struct Case {
    input: String,
    checks: Vec<Check>,
    expected: String,
}

struct Suite {
    name: &'static str,
    seed_instructions: &'static str,
    cases: Vec<Case>,
}

/// A small deterministic generator, so every run sees the same cases.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

fn json_suite() -> Suite {
    let mut rng = Lcg(11);
    let names = [
        "Maria Lopez",
        "Tom Becker",
        "Aiko Tanaka",
        "Samuel Okoye",
        "Lena Novak",
        "Omar Haddad",
        "Priya Nair",
        "Jonas Berg",
    ];
    let cities = [
        "Lisbon", "Toronto", "Osaka", "Nairobi", "Prague", "Denver", "Chennai", "Oslo",
    ];
    let jobs = [
        "nurse", "engineer", "teacher", "baker", "pilot", "lawyer", "farmer", "designer",
    ];
    let cases = (0..EVOLVE_CASES + HELD_OUT)
        .map(|i| {
            let (name, city, job) = (*rng.pick(&names), *rng.pick(&cities), *rng.pick(&jobs));
            let age = rng.range(19, 78);
            let input = match i % 4 {
                0 => format!("{name} is a {age}-year-old {job} who lives in {city}."),
                1 => {
                    format!("Meet our new {job}, {name} ({age}), who just moved here from {city}.")
                }
                2 => format!("Born {age} years ago, {name} now works as a {job} in {city}."),
                _ => format!("{city} resident {name}, {age}, has been a {job} for years."),
            };
            let expected = json!({"name": name, "age": age, "city": city});
            Case {
                input,
                checks: vec![Check::JsonSchema {
                    schema: json!({
                        "type": "object",
                        "properties": {
                            "name": {"const": name},
                            "age": {"const": age},
                            "city": {"const": city},
                        },
                        "required": ["name", "age", "city"],
                        "additionalProperties": false,
                    }),
                }],
                expected: expected.to_string(),
            }
        })
        .collect();
    Suite {
        name: "json",
        seed_instructions: "Extract the person's details from the text.",
        cases,
    }
}

fn labels_suite() -> Suite {
    let mut rng = Lcg(23);
    let messages: [(&str, &[&str]); 4] = [
        (
            "billing",
            &[
                "I was charged twice for order {n}.",
                "Why does my invoice {n} show a higher amount than the price on your site?",
                "Please refund the extra fee on my last statement ({n}).",
                "My card was billed for a subscription I cancelled, reference {n}.",
            ],
        ),
        (
            "technical",
            &[
                "The app crashes every time I open the settings page (build {n}).",
                "Your website shows error {n} when I try to upload a photo.",
                "Sync stopped working on my tablet after update {n}.",
                "Notifications no longer arrive on my phone since version {n}.",
            ],
        ),
        (
            "account",
            &[
                "I can't reset my password; the link in the email {n} has expired.",
                "How do I change the email address on my profile? My user id is {n}.",
                "Please delete my account {n} and all my data.",
                "Someone logged into my account {n} from another country.",
            ],
        ),
        (
            "shipping",
            &[
                "Package {n} was supposed to arrive on Monday and is still not here.",
                "The courier left parcel {n} at the wrong address.",
                "Can I change the delivery address of order {n} before it ships?",
                "Tracking number {n} has not updated for a week.",
            ],
        ),
    ];
    let cases = (0..EVOLVE_CASES + HELD_OUT)
        .map(|i| {
            let (label, templates) = messages[i % 4];
            let template = rng.pick(templates);
            let input = template.replace("{n}", &rng.range(10_000, 99_999).to_string());
            Case {
                input,
                checks: vec![Check::Equals {
                    value: label.into(),
                    ignore_case: true,
                }],
                expected: label.into(),
            }
        })
        .collect();
    Suite {
        name: "labels",
        seed_instructions: "Classify the customer's message.",
        cases,
    }
}

fn arithmetic_suite() -> Suite {
    let mut rng = Lcg(37);
    let people = ["Tom", "Ana", "Kofi", "Mei", "Lars", "Zoe", "Ravi", "Ines"];
    let things = [
        "apples", "stamps", "marbles", "books", "coins", "stickers", "shells", "pens",
    ];
    let cases = (0..EVOLVE_CASES + HELD_OUT)
        .map(|i| {
            let (who, what) = (*rng.pick(&people), *rng.pick(&things));
            let (a, b, c) = (rng.range(3, 40), rng.range(2, 25), rng.range(2, 6));
            let (input, working, answer) = match i % 3 {
                0 => (
                    format!("{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?"),
                    format!("{a} + {b} = {}", a + b),
                    a + b,
                ),
                1 => (
                    format!("{who} had {} {what} and gave away {b}. How many {what} are left?", a + b),
                    format!("{} - {b} = {a}", a + b),
                    a,
                ),
                _ => (
                    format!("{who} buys {c} boxes with {b} {what} in each box. How many {what} is that in total?"),
                    format!("{c} × {b} = {}", b * c),
                    b * c,
                ),
            };
            Case {
                input,
                checks: vec![Check::Regex {
                    pattern: format!(r"(?m)^ANSWER: {answer}\s*\z"),
                }],
                expected: format!("{working}\nANSWER: {answer}"),
            }
        })
        .collect();
    Suite {
        name: "arithmetic",
        seed_instructions: "Solve the word problem.",
        cases,
    }
}

/// How many of `cases` the instructions pass, asking the model as the evolution does.
async fn pass_rate(
    model: &dyn ChatModel,
    name: &str,
    instructions: &str,
    cases: &[Case],
) -> (usize, u64) {
    let mut passed = 0;
    let mut tokens = 0;
    for case in cases {
        let request = ChatRequest {
            model: name.to_owned(),
            messages: vec![
                ChatMessage::new(Role::System, instructions),
                ChatMessage::new(Role::User, case.input.clone()),
            ],
            tools: Vec::new(),
            temperature: Some(0.0),
            top_p: None,
            max_tokens: Some(200),
        };
        let answer = match model
            .complete(request, Instant::now() + Duration::from_secs(300))
            .await
        {
            Ok(r) => {
                tokens += r.usage.prompt_tokens + r.usage.completion_tokens;
                r.content.unwrap_or_default()
            }
            Err(e) => {
                eprintln!("  held-out call failed: {e}");
                String::new()
            }
        };
        let results: Vec<_> = case
            .checks
            .iter()
            .filter_map(|c| c.evaluate(&answer))
            .collect();
        if checks::combine(&results).score >= 1.0 - 1e-9 {
            passed += 1;
        }
    }
    (passed, tokens)
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    let Ok(url) = std::env::var("AOP_BENCH_LLM") else {
        eprintln!(
            "set AOP_BENCH_LLM=http://127.0.0.1:PORT/v1 (scripts/bench-evolution starts a local model and sets it)"
        );
        return;
    };
    let budget: u32 = env_or("AOP_BENCH_BUDGET", "300")
        .parse()
        .expect("AOP_BENCH_BUDGET");
    // A small reflection model often rewrites without improving: let it keep trying while the
    // budget lasts.
    let patience: u32 = env_or("AOP_BENCH_PATIENCE", "40")
        .parse()
        .expect("AOP_BENCH_PATIENCE");
    let model_name = env_or("AOP_BENCH_MODEL", "local-model");
    let prices = env_or("AOP_BENCH_PRICES", &format!("{model_name}=0.15/0.60"));
    let wanted = env_or("AOP_BENCH_SUITES", "json,labels,arithmetic");
    let suites: Vec<Suite> = [json_suite(), labels_suite(), arithmetic_suite()]
        .into_iter()
        .filter(|s| wanted.split(',').any(|w| w.trim() == s.name))
        .collect();

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let env: BTreeMap<String, String> = [
            ("OPENAI_BASE_URL", url.clone()),
            ("OPENAI_API_KEY", "sk-local".to_owned()),
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("LOG_LEVEL", "warn".to_owned()),
            ("AOP_MODEL_PRICES", prices),
            // One llama.cpp slot: calls queue there anyway.
            ("AOP_EVOLUTION_CONCURRENCY", "1".to_owned()),
            ("AOP_EVOLUTION_CALL_TIMEOUT_SECONDS", "300".to_owned()),
            ("AOP_EVOLUTION_STEP_SECONDS", "3600".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let config = Config::from_sources(None, &env, &Overrides::default()).expect("config");
        let platform = Platform::build(&config).expect("platform");
        let model = aop_runtime::adapters::openai_model(&config)
            .expect("model settings")
            .expect("a model endpoint");

        println!(
            "| suite | held-out seed | held-out evolved | Δ points | validation seed → best | metric calls | model calls | tokens | cost at list price | evolution wall time |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for suite in &suites {
            let started = Instant::now();
            let agent_id: AgentId = platform
                .mcp
                .agents
                .create(CreateAgent {
                    name: format!("bench {}", suite.name),
                    instructions: suite.seed_instructions.into(),
                    model: Some(model_name.clone()),
                    parameters: serde_json::from_value(json!({"temperature": 0, "max_tokens": 200}))
                        .expect("parameters"),
                    ..CreateAgent::default()
                })
                .await
                .expect("agent")
                .agent
                .agent_id;
            let (evolve, held_out) = suite.cases.split_at(EVOLVE_CASES);
            let cases: Vec<NewEvalCase> = evolve
                .iter()
                .map(|c| {
                    serde_json::from_value(json!({
                        "input": c.input, "checks": c.checks, "expected": c.expected,
                    }))
                    .expect("case")
                })
                .collect();
            let evolutions = &platform.mcp.evolutions;
            evolutions
                .add_eval_cases(AddEvalCases {
                    agent_id: agent_id.clone(),
                    cases,
                })
                .await
                .expect("cases");
            let input: InitializeEvolution = serde_json::from_value(json!({
                "agent_id": agent_id, "valset_size": VALSET, "minibatch_size": MINIBATCH,
                "budget": {"max_metric_calls": budget, "max_seconds": 14_400, "max_cost_usd": 50.0},
                "patience": patience,
            }))
            .expect("input");
            let run = evolutions
                .initialize(input, &Principal::named("bench"))
                .await
                .expect("initialize");
            let id = run.evolution_id;
            loop {
                let now = evolutions.status(&id).await.expect("status");
                if now.status != EvolutionStatus::Running {
                    break;
                }
                evolutions.step(&id, now.iteration).await.expect("step");
                let run = evolutions.run(&id).await.expect("run");
                if let Some(h) = run.history.last() {
                    eprintln!(
                        "  {} iteration {}: {} — {} (best {:.3}, {} metric calls)",
                        suite.name, h.iteration, h.outcome, h.detail, h.best_val, run.spend.metric_calls
                    );
                }
            }
            let done = evolutions.status(&id).await.expect("status");
            let evolved_instructions = match &done.winner {
                Some(w) => {
                    platform
                        .mcp
                        .agents
                        .get(&agent_id, Some(w.version))
                        .await
                        .expect("winner")
                        .version
                        .instructions
                }
                None => suite.seed_instructions.to_owned(),
            };
            let evolve_time = started.elapsed();
            let (seed_pass, seed_tokens) =
                pass_rate(&model, &model_name, suite.seed_instructions, held_out).await;
            let (evolved_pass, evolved_tokens) =
                pass_rate(&model, &model_name, &evolved_instructions, held_out).await;
            let pct = |n: usize| 100.0 * n as f64 / held_out.len() as f64;
            eprintln!(
                "  {}: stop: {}; evolved instructions:\n{evolved_instructions}\n",
                suite.name,
                done.stop_reason.as_deref().unwrap_or("-")
            );
            println!(
                "| {} | {}/{} ({:.0}%) | {}/{} ({:.0}%) | {:+.0} | {:.3} → {:.3} | {} of {} | {} | {} (+{} held-out) | USD {:.4} | {:.1} min |",
                suite.name,
                seed_pass,
                held_out.len(),
                pct(seed_pass),
                evolved_pass,
                held_out.len(),
                pct(evolved_pass),
                pct(evolved_pass) - pct(seed_pass),
                done.seed_score.unwrap_or(0.0),
                done.best_score.unwrap_or(0.0),
                done.spend.metric_calls,
                budget,
                done.spend.llm_calls,
                done.spend.tokens,
                seed_tokens + evolved_tokens,
                done.spend.cost_usd,
                evolve_time.as_secs_f64() / 60.0
            );
        }
    });
}
