//! Shared helpers: where moto is, SDK clients with fake credentials, an API call counter and a
//! log capture.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_secretsmanager::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_secretsmanager::config::{BehaviorVersion, ConfigBag, Credentials, Intercept, Region};

/// The moto endpoint, or `None` (with a printed reason) when the tests that need it should skip.
///
/// # Panics
/// When `AOP_REQUIRE_SERVICES` is set but `AOP_TEST_MOTO` is not: a run that promised real
/// services must not pass by skipping.
pub fn moto() -> Option<String> {
    aop_test_support::service(aop_test_support::Service::Moto)
}

/// Fake credentials: moto accepts any, and nothing here should read the developer's own.
pub fn credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "aop-aws-tests")
}

/// A Secrets Manager SDK client for `endpoint`, configured without touching the environment.
pub fn secrets_sdk(endpoint: &str, calls: Option<&CallCounter>) -> aws_sdk_secretsmanager::Client {
    let mut config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(credentials())
        .endpoint_url(endpoint)
        .http_client(aop_aws::https_client());
    if let Some(calls) = calls {
        config = config.interceptor(calls.clone());
    }
    aws_sdk_secretsmanager::Client::from_conf(config.build())
}

/// A name no other test (or earlier run against the same moto) has used.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Counts SDK operations (not HTTP attempts) made through the client it is installed on.
#[derive(Debug, Clone, Default)]
pub struct CallCounter(Arc<AtomicUsize>);

impl CallCounter {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Everything logged through `tracing`, at every level, while the guard lives (on this thread,
/// so use it from a current-thread runtime).
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(self.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Runs one test of this binary again in a child process with `env` as its only AWS
/// environment, so `from_env` can be tested without changing this process's environment.
/// The child sees `AOP_AWS_CHILD` set to the test's name.
///
/// # Panics
/// When the child test fails; its output is shown.
pub fn run_in_child(test: &str, env: &[(&str, &str)]) {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args([test, "--exact", "--nocapture", "--test-threads=1"]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
        .envs(env.iter().copied())
        .env("AOP_AWS_CHILD", test)
        // Never ask the instance metadata service: it is not a local address.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aop-aws-test/config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aop-aws-test/credentials",
        );
    let output = command.output().unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "child test {test} failed:\n{shown}"
    );
    assert!(
        shown.contains("1 passed"),
        "child test {test} did not run:\n{shown}"
    );
}

/// In a child started by [`run_in_child`] for `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var("AOP_AWS_CHILD").is_ok_and(|name| name == test)
}
