//! The platform's configuration: every adapter's settings section, composed, plus the few
//! settings of the runtime itself. Loaded once: defaults < `config.yaml` < environment <
//! command line; every problem is reported at once, each naming the setting, its variable and
//! where its value came from.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aop_aws::SecretsSettings;
use aop_config::{Kind, Loader, Problems, Section, Setting, help_lines};
use aop_core::EvolutionRules;
use aop_core::deployment::CanaryPolicy;
use aop_core::evolution::EvolutionSettings;
use aop_core::principal::Principal;
use aop_core::services::conversation::TurnLimits;
use aop_core::services::proposals::ReviewRules;
use aop_core::spend::SpendCaps;
use aop_events::KafkaSettings;
use aop_store_neo4j::Neo4jSettings;
use aop_store_sqlite::SqliteSettings;
use serde::{Deserialize, Serialize};

pub use aop_config::{ConfigError, Overrides};
pub use aop_llm::OpenAiSettings;
pub use aop_mcp::ServerSettings;

/// Top-level settings: the environment's name and the log filter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneralSettings {
    /// A name for this deployment (`development`, `production`): a metrics dimension.
    pub environment: String,
    pub logging: LoggingSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSettings {
    /// `info`, or a filter such as `aop=debug,info`.
    pub level: String,
}

impl Default for GeneralSettings {
    fn default() -> Self {
        Self {
            environment: "development".into(),
            logging: LoggingSettings::default(),
        }
    }
}

impl Default for LoggingSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

impl Section for GeneralSettings {
    const NAME: &'static str = "";
    const SETTINGS: &'static [Setting] = &[
        Setting::new("environment", "ENVIRONMENT", Kind::Text),
        Setting::new("logging.level", "LOG_LEVEL", Kind::Text).expecting(
            "a level (error, warn, info, debug, trace) or a filter such as aop=debug,info",
        ),
    ];

    fn check(&self, problems: &mut Problems) {
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            problems.push(
                "logging.level",
                "must be a level (error, warn, info, debug, trace) or a filter such as aop=debug,info",
            );
        }
    }
}

/// The `agents` section: bounds on agent turns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsSettings {
    #[serde(rename = "turn_timeout_seconds", with = "aop_config::seconds")]
    pub turn_timeout: Duration,
    pub max_delegation_depth: usize,
    pub max_tool_calls: usize,
    pub history_budget_tokens: usize,
    /// Daily cap (UTC day) on what each agent and each caller spends on model calls, US
    /// dollars; no cap when absent.
    pub daily_cost_cap_usd: Option<f64>,
    /// Each caller's cap when it differs from `daily_cost_cap_usd`.
    pub caller_daily_cost_cap_usd: Option<f64>,
    /// Caps of single agents, `agent_id=usd`, over `daily_cost_cap_usd`.
    pub agent_cost_caps: Vec<String>,
    /// Caps of single callers, `name=usd`, over `caller_daily_cost_cap_usd`.
    pub caller_cost_caps: Vec<String>,
}

impl Default for AgentsSettings {
    fn default() -> Self {
        let limits = TurnLimits::default();
        Self {
            turn_timeout: limits.turn_timeout,
            max_delegation_depth: limits.max_delegation_depth,
            max_tool_calls: limits.max_tool_calls,
            history_budget_tokens: limits.history_budget_tokens,
            daily_cost_cap_usd: None,
            caller_daily_cost_cap_usd: None,
            agent_cost_caps: Vec::new(),
            caller_cost_caps: Vec::new(),
        }
    }
}

impl AgentsSettings {
    pub fn limits(&self) -> TurnLimits {
        TurnLimits {
            max_delegation_depth: self.max_delegation_depth,
            max_tool_calls: self.max_tool_calls,
            history_budget_tokens: self.history_budget_tokens,
            turn_timeout: self.turn_timeout,
        }
    }

    /// The daily spend caps; the configuration was checked, so every entry parses.
    pub fn spend_caps(&self) -> SpendCaps {
        SpendCaps {
            per_agent_usd: self.daily_cost_cap_usd,
            per_caller_usd: self.caller_daily_cost_cap_usd.or(self.daily_cost_cap_usd),
            agents: aop_core::spend::parse_agent_caps(&self.agent_cost_caps).unwrap_or_default(),
            callers: aop_core::spend::parse_caller_caps(&self.caller_cost_caps).unwrap_or_default(),
        }
    }
}

impl Section for AgentsSettings {
    const NAME: &'static str = "agents";
    const SETTINGS: &'static [Setting] = &[
        Setting::new(
            "turn_timeout_seconds",
            "AOP_TURN_TIMEOUT_SECONDS",
            Kind::Whole,
        )
        .expecting("a whole number of seconds"),
        Setting::new(
            "max_delegation_depth",
            "AOP_MAX_DELEGATION_DEPTH",
            Kind::Whole,
        ),
        Setting::new("max_tool_calls", "AOP_MAX_TOOL_CALLS", Kind::Whole),
        Setting::new(
            "history_budget_tokens",
            "AOP_HISTORY_BUDGET_TOKENS",
            Kind::Whole,
        ),
        Setting::new("daily_cost_cap_usd", "AOP_DAILY_COST_CAP_USD", Kind::Number)
            .expecting("US dollars per UTC day, at least 0"),
        Setting::new(
            "caller_daily_cost_cap_usd",
            "AOP_CALLER_DAILY_COST_CAP_USD",
            Kind::Number,
        )
        .expecting("US dollars per UTC day, at least 0"),
        Setting::new("agent_cost_caps", "AOP_AGENT_COST_CAPS", Kind::List)
            .expecting("agent_id=usd entries separated by commas"),
        Setting::new("caller_cost_caps", "AOP_CALLER_COST_CAPS", Kind::List)
            .expecting("name=usd entries separated by commas"),
    ];

    fn check(&self, problems: &mut Problems) {
        if self.turn_timeout.is_zero() {
            problems.push("turn_timeout_seconds", "must be at least 1");
        }
        problems.at_least("max_tool_calls", self.max_tool_calls, 1);
        problems.at_least("history_budget_tokens", self.history_budget_tokens, 1);
        for (key, cap) in [
            ("daily_cost_cap_usd", self.daily_cost_cap_usd),
            ("caller_daily_cost_cap_usd", self.caller_daily_cost_cap_usd),
        ] {
            if cap.is_some_and(|c| !c.is_finite() || c < 0.0) {
                problems.push(key, "must be a number of US dollars, at least 0");
            }
        }
        if let Err(reason) = aop_core::spend::parse_agent_caps(&self.agent_cost_caps) {
            problems.push("agent_cost_caps", reason);
        }
        if let Err(reason) = aop_core::spend::parse_caller_caps(&self.caller_cost_caps) {
            problems.push("caller_cost_caps", reason);
        }
    }
}

/// The `deployments` section: the default canary policy, who reviews proposals, and how often
/// the controller checks a canary.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeploymentsSettings {
    pub canary: CanaryPolicy,
    /// Principals (API key names, token subjects) allowed to review; empty: any authenticated
    /// caller.
    pub reviewers: Vec<String>,
    /// Approvals a proposal needs; 0 means min(2, number of reviewers), or 1 without a list.
    pub required_approvals: u32,
    pub proposal_ttl_hours: u64,
    /// How often a canary is checked at most (after traffic, and on the schedule).
    #[serde(rename = "check_interval_seconds", with = "aop_config::seconds")]
    pub check_interval: Duration,
}

impl Default for DeploymentsSettings {
    fn default() -> Self {
        Self {
            canary: CanaryPolicy::default(),
            reviewers: Vec::new(),
            required_approvals: 0,
            proposal_ttl_hours: 7 * 24,
            check_interval: Duration::from_secs(60),
        }
    }
}

impl DeploymentsSettings {
    /// Who reviews and how many approvals a proposal needs.
    pub fn review_rules(&self) -> ReviewRules {
        ReviewRules {
            reviewers: self.reviewers.iter().map(|r| Principal::named(r)).collect(),
            required_approvals: (self.required_approvals > 0).then_some(self.required_approvals),
            ttl_ms: i64::try_from(self.proposal_ttl_hours.saturating_mul(3_600_000))
                .unwrap_or(i64::MAX),
        }
    }

    pub fn check_interval_ms(&self) -> i64 {
        i64::try_from(self.check_interval.as_millis()).unwrap_or(i64::MAX)
    }
}

impl Section for DeploymentsSettings {
    const NAME: &'static str = "deployments";
    const SETTINGS: &'static [Setting] = &[
        Setting::new("canary.steps", "AOP_CANARY_STEPS", Kind::Numbers),
        Setting::new(
            "canary.min_rated_turns",
            "AOP_CANARY_MIN_RATED_TURNS",
            Kind::Whole,
        ),
        Setting::new(
            "canary.promote_probability",
            "AOP_CANARY_PROMOTE_PROBABILITY",
            Kind::Number,
        ),
        Setting::new(
            "canary.max_relative_loss",
            "AOP_CANARY_MAX_RELATIVE_LOSS",
            Kind::Number,
        ),
        Setting::new(
            "canary.rollback_probability",
            "AOP_CANARY_ROLLBACK_PROBABILITY",
            Kind::Number,
        ),
        Setting::new("canary.alpha", "AOP_CANARY_ALPHA", Kind::Number),
        Setting::new(
            "canary.max_error_rate",
            "AOP_CANARY_MAX_ERROR_RATE",
            Kind::Number,
        ),
        Setting::new(
            "canary.hard_limit_checks",
            "AOP_CANARY_HARD_LIMIT_CHECKS",
            Kind::Whole,
        ),
        Setting::new(
            "canary.max_latency_increase",
            "AOP_CANARY_MAX_LATENCY_INCREASE",
            Kind::Number,
        ),
        Setting::new(
            "canary.max_cost_increase",
            "AOP_CANARY_MAX_COST_INCREASE",
            Kind::Number,
        ),
        Setting::new(
            "canary.step_min_seconds",
            "AOP_CANARY_STEP_MIN_SECONDS",
            Kind::Whole,
        ),
        Setting::new(
            "canary.step_min_sessions",
            "AOP_CANARY_STEP_MIN_SESSIONS",
            Kind::Whole,
        ),
        Setting::new("canary.srm_p", "AOP_CANARY_SRM_P", Kind::Number),
        Setting::new(
            "canary.timeout_seconds",
            "AOP_CANARY_TIMEOUT_SECONDS",
            Kind::Whole,
        ),
        Setting::new(
            "canary.bake_seconds",
            "AOP_CANARY_BAKE_SECONDS",
            Kind::Whole,
        ),
        Setting::new(
            "canary.bake_max_drop",
            "AOP_CANARY_BAKE_MAX_DROP",
            Kind::Number,
        ),
        Setting::new(
            "canary.auto_rollback",
            "AOP_CANARY_AUTO_ROLLBACK",
            Kind::Flag,
        ),
        Setting::new(
            "canary.bake_min_rated_turns",
            "AOP_CANARY_BAKE_MIN_RATED_TURNS",
            Kind::Whole,
        ),
        Setting::new("reviewers", "AOP_REVIEWERS", Kind::List),
        Setting::new("required_approvals", "AOP_REQUIRED_APPROVALS", Kind::Whole),
        Setting::new("proposal_ttl_hours", "AOP_PROPOSAL_TTL_HOURS", Kind::Whole),
        Setting::new(
            "check_interval_seconds",
            "AOP_DEPLOYMENT_CHECK_SECONDS",
            Kind::Whole,
        )
        .expecting("a whole number of seconds"),
    ];

    fn check(&self, problems: &mut Problems) {
        if let Err(e) = self.canary.check("canary") {
            problems.push(&e.field, e.reason);
        }
        if self.proposal_ttl_hours == 0 {
            problems.push("proposal_ttl_hours", "must be at least 1");
        }
        if self.check_interval.is_zero() {
            problems.push("check_interval_seconds", "must be at least 1");
        }
    }
}

/// The `evolution` section: the defaults of every evolution run and how the worker steps them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvolutionConfig {
    pub max_metric_calls: u32,
    pub max_cost_usd: f64,
    pub max_seconds: u64,
    pub minibatch_size: usize,
    pub valset_size: usize,
    pub window_days: u32,
    pub max_replayed: usize,
    pub patience: u32,
    pub target: f64,
    pub max_candidates: usize,
    pub min_improvement: f64,
    pub max_regression: f64,
    /// The model that rewrites instructions; empty: each agent's own.
    pub reflection_model: String,
    /// The model of judge checks; empty: each agent's own.
    pub judge_model: String,
    pub call_timeout_seconds: u64,
    /// Cases scored at the same time.
    pub concurrency: usize,
    /// How long one step may start model calls before it asks for a continuation.
    pub step_seconds: u64,
    /// Transient model failures in a row before a run fails.
    pub max_retries: u32,
    /// A running run nothing moved for this long is asked for its iteration again.
    pub stall_seconds: u64,
    /// Start a run on an agent with this many new low-rated turns and no live canary; 0: off.
    pub auto_trigger_low_rated: usize,
}

impl Default for EvolutionConfig {
    fn default() -> Self {
        let rules = EvolutionRules::default();
        let d = rules.defaults;
        Self {
            max_metric_calls: d.budget.max_metric_calls,
            max_cost_usd: d.budget.max_cost_usd,
            max_seconds: d.budget.max_seconds,
            minibatch_size: d.minibatch_size,
            valset_size: d.valset_size,
            window_days: d.window_days,
            max_replayed: d.max_replayed,
            patience: d.patience,
            target: d.target,
            max_candidates: d.max_candidates,
            min_improvement: d.min_improvement,
            max_regression: d.max_regression,
            reflection_model: String::new(),
            judge_model: String::new(),
            call_timeout_seconds: d.call_timeout_seconds,
            concurrency: rules.concurrency,
            step_seconds: rules.step_seconds,
            max_retries: rules.max_retries,
            stall_seconds: 1_800,
            auto_trigger_low_rated: 0,
        }
    }
}

impl EvolutionConfig {
    /// The rules every run starts from.
    pub fn rules(&self) -> EvolutionRules {
        let mut defaults = EvolutionSettings::default();
        defaults.budget.max_metric_calls = self.max_metric_calls;
        defaults.budget.max_cost_usd = self.max_cost_usd;
        defaults.budget.max_seconds = self.max_seconds;
        defaults.minibatch_size = self.minibatch_size;
        defaults.valset_size = self.valset_size;
        defaults.window_days = self.window_days;
        defaults.max_replayed = self.max_replayed;
        defaults.patience = self.patience;
        defaults.target = self.target;
        defaults.max_candidates = self.max_candidates;
        defaults.min_improvement = self.min_improvement;
        defaults.max_regression = self.max_regression;
        defaults.reflection_model =
            (!self.reflection_model.is_empty()).then(|| self.reflection_model.clone());
        defaults.judge_model = (!self.judge_model.is_empty()).then(|| self.judge_model.clone());
        defaults.call_timeout_seconds = self.call_timeout_seconds;
        EvolutionRules {
            defaults,
            concurrency: self.concurrency,
            step_seconds: self.step_seconds,
            max_retries: self.max_retries,
        }
    }

    pub fn stall_ms(&self) -> i64 {
        i64::try_from(self.stall_seconds.saturating_mul(1_000)).unwrap_or(i64::MAX)
    }
}

impl Section for EvolutionConfig {
    const NAME: &'static str = "evolution";
    const SETTINGS: &'static [Setting] = &[
        Setting::new(
            "max_metric_calls",
            "AOP_EVOLUTION_MAX_METRIC_CALLS",
            Kind::Whole,
        ),
        Setting::new("max_cost_usd", "AOP_EVOLUTION_MAX_COST_USD", Kind::Number),
        Setting::new("max_seconds", "AOP_EVOLUTION_MAX_SECONDS", Kind::Whole),
        Setting::new(
            "minibatch_size",
            "AOP_EVOLUTION_MINIBATCH_SIZE",
            Kind::Whole,
        ),
        Setting::new("valset_size", "AOP_EVOLUTION_VALSET_SIZE", Kind::Whole),
        Setting::new("window_days", "AOP_EVOLUTION_WINDOW_DAYS", Kind::Whole),
        Setting::new("max_replayed", "AOP_EVOLUTION_MAX_REPLAYED", Kind::Whole),
        Setting::new("patience", "AOP_EVOLUTION_PATIENCE", Kind::Whole),
        Setting::new("target", "AOP_EVOLUTION_TARGET", Kind::Number),
        Setting::new(
            "max_candidates",
            "AOP_EVOLUTION_MAX_CANDIDATES",
            Kind::Whole,
        ),
        Setting::new(
            "min_improvement",
            "AOP_EVOLUTION_MIN_IMPROVEMENT",
            Kind::Number,
        ),
        Setting::new(
            "max_regression",
            "AOP_EVOLUTION_MAX_REGRESSION",
            Kind::Number,
        ),
        Setting::new(
            "reflection_model",
            "AOP_EVOLUTION_REFLECTION_MODEL",
            Kind::Text,
        ),
        Setting::new("judge_model", "AOP_EVOLUTION_JUDGE_MODEL", Kind::Text),
        Setting::new(
            "call_timeout_seconds",
            "AOP_EVOLUTION_CALL_TIMEOUT_SECONDS",
            Kind::Whole,
        ),
        Setting::new("concurrency", "AOP_EVOLUTION_CONCURRENCY", Kind::Whole),
        Setting::new("step_seconds", "AOP_EVOLUTION_STEP_SECONDS", Kind::Whole),
        Setting::new("max_retries", "AOP_EVOLUTION_MAX_RETRIES", Kind::Whole),
        Setting::new("stall_seconds", "AOP_EVOLUTION_STALL_SECONDS", Kind::Whole),
        Setting::new(
            "auto_trigger_low_rated",
            "AOP_EVOLUTION_AUTO_TRIGGER_LOW_RATED",
            Kind::Whole,
        ),
    ];

    fn check(&self, problems: &mut Problems) {
        problems.at_least("max_metric_calls", u64::from(self.max_metric_calls), 1);
        if !(self.max_cost_usd.is_finite() && self.max_cost_usd > 0.0) {
            problems.push("max_cost_usd", "must be a positive number of dollars");
        }
        problems.at_least("max_seconds", self.max_seconds, 1);
        problems.at_least("minibatch_size", self.minibatch_size, 1);
        problems.at_least("valset_size", self.valset_size, 1);
        problems.at_least("window_days", u64::from(self.window_days), 1);
        problems.at_least("patience", u64::from(self.patience), 1);
        for (key, value) in [
            ("target", self.target),
            ("min_improvement", self.min_improvement),
            ("max_regression", self.max_regression),
        ] {
            if !(0.0..=1.0).contains(&value) {
                problems.push(key, "must be between 0 and 1");
            }
        }
        problems.at_least("max_candidates", self.max_candidates, 2);
        problems.at_least("call_timeout_seconds", self.call_timeout_seconds, 1);
        problems.at_least("concurrency", self.concurrency, 1);
        problems.at_least("step_seconds", self.step_seconds, 1);
        problems.at_least("max_retries", u64::from(self.max_retries), 1);
        problems.at_least("stall_seconds", self.stall_seconds, 1);
        let minimum = self.rules().defaults.minimum_metric_calls();
        if self.max_metric_calls < minimum {
            problems.push(
                "max_metric_calls",
                format!(
                    "must be at least {minimum} for valset_size {} and minibatch_size {}",
                    self.valset_size, self.minibatch_size
                ),
            );
        }
    }
}

/// The whole configuration: each section owned by the adapter it configures.
#[derive(Debug, Clone)]
pub struct Config {
    pub general: GeneralSettings,
    pub server: ServerSettings,
    /// The embedded store; used when no Neo4j is configured.
    pub sqlite: SqliteSettings,
    /// Neo4j, when `NEO4J_URI` or `NEO4J_SECRET_ARN` is set.
    pub neo4j: Option<Neo4jSettings>,
    pub kafka: KafkaSettings,
    pub openai: OpenAiSettings,
    pub agents: AgentsSettings,
    pub deployments: DeploymentsSettings,
    pub evolution: EvolutionConfig,
    pub secrets: SecretsSettings,
}

impl Config {
    /// Loads from the process environment, the config file (`--config`, `AOP_CONFIG`, or
    /// `./config.yaml` when present) and the command-line overrides.
    ///
    /// # Errors
    /// `ConfigError` listing every invalid setting.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::from_sources(file, &std::env::vars().collect(), overrides)
    }

    /// Loads from explicit sources; `env` stands for the process environment.
    ///
    /// # Errors
    /// `ConfigError` listing every invalid setting.
    pub fn from_sources(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut loader = Loader::new(file, env.clone(), overrides.clone());
        // Every section is read whatever this process uses: one configuration serves every
        // function, and a typo is caught by all of them.
        let general: GeneralSettings = loader.section();
        let server: ServerSettings = loader.section();
        let sqlite: SqliteSettings = loader.section();
        let neo4j: Neo4jSettings = loader.section();
        let kafka: KafkaSettings = loader.section();
        let openai: OpenAiSettings = loader.section();
        let agents: AgentsSettings = loader.section();
        let deployments: DeploymentsSettings = loader.section();
        let evolution: EvolutionConfig = loader.section();
        let secrets: SecretsSettings = loader.section();

        if sqlite.data_dir.as_os_str().is_empty() {
            loader.problem("database.data_dir", "must not be empty");
        }
        // With a Kafka secret, the SASL credentials come from Secrets Manager at start.
        if kafka.uses_sasl() && secrets.kafka_arn.is_none() {
            use secrecy::ExposeSecret;
            if kafka.sasl_username.is_empty() {
                loader.problem(
                    "kafka.sasl_username",
                    "is required with sasl_ssl (or set KAFKA_SECRET_ARN)",
                );
            }
            if kafka.sasl_password.expose_secret().is_empty() {
                loader.problem(
                    "kafka.sasl_password",
                    "is required with sasl_ssl (or set KAFKA_SECRET_ARN)",
                );
            }
        }
        let neo4j = (!neo4j.uri.is_empty() || secrets.neo4j_arn.is_some()).then_some(neo4j);
        loader.finish()?;
        Ok(Self {
            general,
            server,
            sqlite,
            neo4j,
            kafka,
            openai,
            agents,
            deployments,
            evolution,
            secrets,
        })
    }

    pub fn environment(&self) -> &str {
        &self.general.environment
    }

    pub fn log_level(&self) -> &str {
        &self.general.logging.level
    }
}

/// Help text listing every setting, its variable and its default, for `--help`.
pub fn settings_help() -> String {
    let mut out = String::from(
        "Settings (config.yaml key / environment variable / default); precedence: defaults < config file < environment < flags:\n",
    );
    let lines = [
        help_lines::<GeneralSettings>(),
        help_lines::<ServerSettings>(),
        help_lines::<SqliteSettings>(),
        help_lines::<Neo4jSettings>(),
        help_lines::<SecretsSettings>(),
        help_lines::<KafkaSettings>(),
        help_lines::<OpenAiSettings>(),
        help_lines::<AgentsSettings>(),
        help_lines::<DeploymentsSettings>(),
        help_lines::<EvolutionConfig>(),
    ];
    for (key, var, default) in lines.into_iter().flatten() {
        let shown = if default.is_empty() {
            "(unset)".to_owned()
        } else {
            default
        };
        out.push_str(&format!("  {key:<40} {var:<38} {shown}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(file: Option<&Path>, e: &[(&str, &str)], o: &Overrides) -> Result<Config, ConfigError> {
        Config::from_sources(file, &env(e), o)
    }

    #[test]
    fn every_runtime_section_declares_every_field() {
        for problems in [
            aop_config::undeclared::<GeneralSettings>(),
            aop_config::undeclared::<AgentsSettings>(),
            aop_config::undeclared::<DeploymentsSettings>(),
            aop_config::undeclared::<EvolutionConfig>(),
        ] {
            assert!(problems.is_empty(), "{problems:?}");
        }
    }

    #[test]
    fn canary_defaults_come_from_the_deployments_section() {
        let c = load(
            None,
            &[
                ("AOP_CANARY_STEPS", "20, 50"),
                ("AOP_CANARY_MIN_RATED_TURNS", "30"),
                ("AOP_REVIEWERS", "bob,carol"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.deployments.canary.steps, [20, 50]);
        assert_eq!(c.deployments.canary.min_rated_turns, 30);
        assert_eq!(c.deployments.review_rules().required(), 2);
        let err = load(
            None,
            &[("AOP_CANARY_STEPS", "50,20")],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("deployments.canary.steps (AOP_CANARY_STEPS, from environment variable AOP_CANARY_STEPS): shares must rise"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_loopback_8000_and_the_embedded_store() {
        let c = load(None, &[], &Overrides::default()).unwrap();
        assert_eq!(c.server.port, 8000);
        assert!(c.server.host.is_loopback());
        assert!(c.neo4j.is_none());
        assert_eq!(c.sqlite.data_dir, PathBuf::from("./.aop"));
        assert_eq!(c.kafka.topics.agent_events, "agent_events");
        assert_eq!(c.openai.attempt_timeout, Duration::from_secs(30));
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "server:\n  port: 9001\n  allowed_hosts: [a.example, b.example]\nopenai:\n  model: file-model\n",
        )
        .unwrap();
        let c = load(Some(&path), &[], &Overrides::default()).unwrap();
        assert_eq!(c.server.port, 9001);
        assert_eq!(c.server.allowed_hosts, ["a.example", "b.example"]);
        assert_eq!(c.openai.model, "file-model");
        let c = load(
            Some(&path),
            &[("MCP_SERVER_PORT", "9002")],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.server.port, 9002);
        assert_eq!(c.openai.model, "file-model");
        let mut flags = Overrides::default();
        flags.set("server.port", "--port", "9003");
        let c = load(Some(&path), &[("MCP_SERVER_PORT", "9002")], &flags).unwrap();
        assert_eq!(c.server.port, 9003);
    }

    #[test]
    fn every_bad_setting_is_named_at_once() {
        let err = load(
            None,
            &[
                ("MCP_SERVER_PORT", "eighty"),
                ("LOG_LEVEL", "loud[["),
                ("AOP_STATELESS", "maybe"),
                ("NEO4J_URI", "http://db"),
            ],
            &Overrides::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 4, "{text}");
        assert!(text.contains("server.port (MCP_SERVER_PORT, from environment variable MCP_SERVER_PORT): must be a port number 0-65535 (got 'eighty')"), "{text}");
        assert!(text.contains("logging.level (LOG_LEVEL"), "{text}");
        assert!(text.contains("server.stateless (AOP_STATELESS"), "{text}");
        assert!(text.contains("database.uri (NEO4J_URI"), "{text}");
    }

    #[test]
    fn toolsets_are_chosen_by_name_and_a_wrong_name_is_refused() {
        let config = load(
            None,
            &[("AOP_TOOLSETS", "agents, evolution")],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            config.server.toolsets(),
            [aop_mcp::Toolset::Agents, aop_mcp::Toolset::Evolution]
        );
        let err = load(
            None,
            &[("AOP_TOOLSETS", "agents,deployment")],
            &Overrides::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("server.toolsets (AOP_TOOLSETS")
                && text.contains("'deployment' is not a toolset; the toolsets are agents, sessions, feedback, deployments, evolution"),
            "{text}"
        );
    }

    #[test]
    fn spend_caps_are_read_and_bad_ones_named() {
        let c = load(
            None,
            &[
                ("AOP_DAILY_COST_CAP_USD", "5"),
                ("AOP_AGENT_COST_CAPS", "agt_cheap=0.5, agt_free=0"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        let caps = c.agents.spend_caps();
        assert_eq!(caps.per_agent_usd, Some(5.0));
        assert_eq!(
            caps.per_caller_usd,
            Some(5.0),
            "callers share the cap unless told"
        );
        let cheap = aop_core::AgentId::try_from("agt_cheap".to_owned()).unwrap();
        assert_eq!(caps.agent(&cheap), Some(0.5));
        assert_eq!(
            load(None, &[], &Overrides::default())
                .unwrap()
                .agents
                .spend_caps(),
            SpendCaps::default(),
            "no caps unless configured"
        );
        let err = load(
            None,
            &[
                ("AOP_CALLER_DAILY_COST_CAP_USD", "-1"),
                ("AOP_AGENT_COST_CAPS", "agt_cheap"),
                ("AOP_CALLER_COST_CAPS", "batch-job"),
            ],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("agents.caller_daily_cost_cap_usd (AOP_CALLER_DAILY_COST_CAP_USD"),
            "{err}"
        );
        assert!(
            err.contains("must be a number of US dollars, at least 0"),
            "{err}"
        );
        assert!(
            err.contains("agents.agent_cost_caps (AOP_AGENT_COST_CAPS"),
            "{err}"
        );
        assert!(
            err.contains("'agt_cheap' must be written agent_id=usd"),
            "{err}"
        );
        assert!(
            err.contains("agents.caller_cost_caps (AOP_CALLER_COST_CAPS"),
            "{err}"
        );
        assert!(
            err.contains("'batch-job' must be written name=usd"),
            "{err}"
        );
    }

    #[test]
    fn unknown_file_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "server:\n  prot: 1\n").unwrap();
        let err = load(Some(&path), &[], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting 'server.prot'"), "{err}");
        let missing = dir.path().join("nope.yaml");
        let err = load(Some(&missing), &[], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.yaml: cannot read"), "{err}");
    }

    #[test]
    fn public_bind_without_keys_is_refused_and_keys_stay_secret() {
        let err = load(
            None,
            &[("MCP_SERVER_HOST", "0.0.0.0")],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs API keys"), "{err}");
        let c = load(
            None,
            &[
                ("MCP_SERVER_HOST", "0.0.0.0"),
                ("AOP_API_KEYS", "sk-one, sk-two"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.server.api_keys.len(), 2);
        assert_eq!(c.server.api_keys[1].expose_secret(), "sk-two");
        let debug = format!("{c:?}");
        assert!(!debug.contains("sk-one"), "{debug}");
    }

    #[test]
    fn kafka_scram_needs_credentials_and_keeps_them_secret() {
        let err = load(
            None,
            &[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("kafka.sasl_username (KAFKA_SASL_USERNAME"),
            "{err}"
        );
        assert!(
            err.contains("kafka.sasl_password (KAFKA_SASL_PASSWORD"),
            "{err}"
        );
        let err = load(
            None,
            &[("KAFKA_SECURITY_PROTOCOL", "iam")],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("must be plaintext, ssl or sasl_ssl (got 'iam')"),
            "{err}"
        );
        // MSK IAM: sasl_ssl with AWS_MSK_IAM, no user name or password.
        let c = load(
            None,
            &[
                ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("KAFKA_SASL_MECHANISM", "AWS_MSK_IAM"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.kafka.uses_iam() && !c.kafka.uses_sasl());
        assert!(matches!(
            c.kafka.security(),
            aop_events::KafkaSecurity::Iam { tokens: None, .. }
        ));
        let err = load(
            None,
            &[
                ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("KAFKA_SASL_MECHANISM", "PLAIN"),
                ("KAFKA_SASL_USERNAME", "aop"),
                ("KAFKA_SASL_PASSWORD", "kafka-secret"),
            ],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("must be SCRAM-SHA-512, SCRAM-SHA-256 or AWS_MSK_IAM"),
            "{err}"
        );
        let c = load(
            None,
            &[
                ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("KAFKA_SASL_USERNAME", "aop"),
                ("KAFKA_SASL_PASSWORD", "kafka-secret"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        assert!(matches!(
            c.kafka.security(),
            aop_events::KafkaSecurity::SaslScram { .. }
        ));
        assert!(!format!("{c:?}").contains("kafka-secret"));
    }

    #[test]
    fn secret_values_are_not_echoed_in_errors() {
        let err = load(
            None,
            &[
                ("OPENAI_API_KEY", "sk-secret"),
                ("OPENAI_BASE_URL", "ftp://x"),
                ("OPENAI_TIMEOUT_SECONDS", "0"),
            ],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("openai.base_url"), "{err}");
        assert!(err.contains("openai.timeout_seconds"), "{err}");
        assert!(!err.contains("sk-secret"), "{err}");
    }
}
