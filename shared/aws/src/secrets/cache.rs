//! A per-ARN cache in front of Secrets Manager: one fetch per TTL however many callers ask at
//! once, forced re-reads for rotation, and a floor on how often a failing secret is re-read.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;

use super::{Secret, SecretsClient, SecretsError};

/// The default floor between two reads of one secret forced by [`SecretCache::refresh`] or
/// repeated after a failure.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Caches secrets by ARN for a fixed time to live.
///
/// - Callers asking for the same ARN at the same time share one fetch and its outcome, error
///   included.
/// - A failed read is not retried for that ARN for the minimum refresh interval (default 5 s):
///   callers get the same error, so a missing secret or a denied role cannot hammer the API.
/// - When a re-read after the TTL finds Secrets Manager unreachable, the previous value is kept
///   for another interval (with a warning) rather than failing requests that it would serve.
///   Permanent errors (deleted, access denied) are returned as they are.
#[derive(Debug)]
pub struct SecretCache {
    client: SecretsClient,
    core: CacheCore,
}

impl SecretCache {
    /// A cache whose entries are served for `ttl` after each successful fetch.
    pub fn new(client: SecretsClient, ttl: Duration) -> Self {
        Self {
            client,
            core: CacheCore::new(ttl, DEFAULT_MIN_REFRESH_INTERVAL),
        }
    }

    /// Changes the floor between two forced or failed reads of one secret (default 5 s).
    #[must_use]
    pub fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.core.min_refresh = interval;
        self
    }

    /// The secret, from the cache while it is younger than the TTL.
    ///
    /// # Errors
    /// [`SecretsError`] from the fetch (shared by every caller that waited for it), or the
    /// last fetch's error again while it is younger than the minimum refresh interval.
    pub async fn get(&self, arn: &str) -> Result<Arc<Secret>, SecretsError> {
        self.core
            .resolve(arn, false, || self.client.fetch(arn))
            .await
    }

    /// Re-reads the secret whatever its age: call it when the service the secret is for refused
    /// it (a rotated password, a revoked API key), then retry once with the new value.
    ///
    /// Reads at most once per minimum refresh interval per ARN: a call within that interval of
    /// the last read returns that read's outcome, so a credential that stays wrong costs one
    /// API call per interval. Compare [`Secret::version_id`] to tell whether anything changed.
    ///
    /// # Errors
    /// As [`SecretCache::get`].
    pub async fn refresh(&self, arn: &str) -> Result<Arc<Secret>, SecretsError> {
        tracing::info!(arn, "re-reading secret on request");
        self.core
            .resolve(arn, true, || self.client.fetch(arn))
            .await
    }

    /// One required key of a cached secret.
    ///
    /// # Errors
    /// As [`SecretCache::get`] and [`Secret::field`].
    pub async fn field(&self, arn: &str, key: &str) -> Result<SecretString, SecretsError> {
        self.get(arn).await?.field(key)
    }
}

/// The caching rules, apart from Secrets Manager so they can be tested with a paused clock.
#[derive(Debug)]
struct CacheCore {
    ttl: Duration,
    min_refresh: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    /// Counts finished fetches, so a caller that queued behind one can tell it finished and
    /// take its outcome instead of fetching again.
    completed: AtomicU64,
    /// Held across the fetch: this is what makes concurrent callers share it.
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    good: Option<Good>,
    last: Option<Attempt>,
}

#[derive(Debug)]
struct Good {
    secret: Arc<Secret>,
    since: Instant,
    fresh_for: Duration,
}

#[derive(Debug)]
struct Attempt {
    at: Instant,
    outcome: Result<Arc<Secret>, SecretsError>,
}

impl CacheCore {
    fn new(ttl: Duration, min_refresh: Duration) -> Self {
        Self {
            ttl,
            min_refresh,
            slots: Mutex::default(),
        }
    }

    fn slot(&self, arn: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(slots.entry(arn.to_owned()).or_default())
    }

    async fn resolve<F, Fut>(
        &self,
        arn: &str,
        force: bool,
        fetch: F,
    ) -> Result<Arc<Secret>, SecretsError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Secret, SecretsError>>,
    {
        let slot = self.slot(arn);
        let seen = slot.completed.load(Ordering::Acquire);
        let mut state = slot.state.lock().await;
        let now = Instant::now();
        if !force
            && let Some(good) = &state.good
            && now.duration_since(good.since) < good.fresh_for
        {
            return Ok(Arc::clone(&good.secret));
        }
        if let Some(last) = &state.last {
            let finished_while_queued = slot.completed.load(Ordering::Acquire) != seen;
            let recent = now.duration_since(last.at) < self.min_refresh;
            if finished_while_queued || (recent && (force || last.outcome.is_err())) {
                return last.outcome.clone();
            }
        }

        let result = fetch().await;
        let now = Instant::now();
        let outcome = match result {
            Ok(secret) => {
                let secret = Arc::new(secret);
                state.good = Some(Good {
                    secret: Arc::clone(&secret),
                    since: now,
                    fresh_for: self.ttl,
                });
                Ok(secret)
            }
            Err(err) if err.is_transient() && state.good.is_some() => {
                tracing::warn!(
                    arn,
                    error = %err,
                    "Secrets Manager unreachable; keeping the cached secret for now"
                );
                let good = state.good.as_mut().expect("checked above");
                good.since = now;
                good.fresh_for = self.min_refresh;
                Ok(Arc::clone(&good.secret))
            }
            Err(err) => {
                tracing::warn!(arn, error = %err, "could not read secret");
                Err(err)
            }
        };
        state.last = Some(Attempt {
            at: now,
            outcome: outcome.clone(),
        });
        slot.completed.fetch_add(1, Ordering::Release);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use secrecy::ExposeSecret;

    use super::*;
    use crate::secrets::keys::API_KEY;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:aop/openai-XyZ";
    const TTL: Duration = Duration::from_secs(300);
    const FLOOR: Duration = Duration::from_secs(5);

    /// What the fake answers: an API key, or how to make the error.
    type Answer = Result<&'static str, fn() -> SecretsError>;

    /// A fake Secrets Manager: counts fetches and gives the current answer.
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
        value: Mutex<Option<Answer>>,
    }

    impl Fake {
        fn answer(&self, value: Answer) {
            *self.value.lock().unwrap() = Some(value);
        }

        async fn fetch(&self) -> Result<Secret, SecretsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            // A real fetch takes time; concurrent callers must overlap with it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            match self.value.lock().unwrap().expect("scripted") {
                Ok(key) => Secret::parse(ARN, None, key),
                Err(make) => Err(make()),
            }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    fn unreachable() -> SecretsError {
        SecretsError::Unreachable {
            arn: ARN.into(),
            source: Arc::new(std::io::Error::other("connection refused")),
        }
    }

    fn denied() -> SecretsError {
        SecretsError::AccessDenied {
            arn: ARN.into(),
            code: "AccessDeniedException".into(),
            source: Arc::new(std::io::Error::other("no")),
        }
    }

    fn key(secret: &Secret) -> String {
        secret.field(API_KEY).unwrap().expose_secret().to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn serves_from_cache_until_ttl_then_refetches() {
        let (core, fake) = setup();
        fake.answer(Ok("sk-one"));
        assert_eq!(key(&get(&core, &fake).await.unwrap()), "sk-one");
        fake.answer(Ok("sk-two"));
        tokio::time::advance(TTL - Duration::from_secs(1)).await;
        assert_eq!(key(&get(&core, &fake).await.unwrap()), "sk-one");
        assert_eq!(fake.calls(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(key(&get(&core, &fake).await.unwrap()), "sk-two");
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch() {
        let (core, fake) = setup();
        fake.answer(Ok("sk-one"));
        for got in together(&core, &fake, 8, false).await {
            assert_eq!(key(&got.unwrap()), "sk-one");
        }
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_failure_and_it_is_not_retried_at_once() {
        let (core, fake) = setup();
        fake.answer(Err(denied));
        for got in together(&core, &fake, 4, false).await {
            assert!(matches!(got, Err(SecretsError::AccessDenied { .. })));
        }
        assert_eq!(fake.calls(), 1);
        fake.answer(Ok("sk-fixed"));
        assert!(get(&core, &fake).await.is_err());
        assert!(refresh(&core, &fake).await.is_err());
        assert_eq!(fake.calls(), 1);
        tokio::time::advance(FLOOR).await;
        assert_eq!(key(&get(&core, &fake).await.unwrap()), "sk-fixed");
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_refetches_at_most_once_per_interval() {
        let (core, fake) = setup();
        fake.answer(Ok("sk-one"));
        get(&core, &fake).await.unwrap();
        tokio::time::advance(FLOOR).await;
        fake.answer(Ok("sk-rotated"));
        for got in together(&core, &fake, 4, true).await {
            assert_eq!(key(&got.unwrap()), "sk-rotated");
        }
        assert_eq!(fake.calls(), 2);
        fake.answer(Ok("sk-three"));
        tokio::time::advance(FLOOR - Duration::from_millis(100)).await;
        assert_eq!(key(&refresh(&core, &fake).await.unwrap()), "sk-rotated");
        assert_eq!(fake.calls(), 2);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(key(&refresh(&core, &fake).await.unwrap()), "sk-three");
        assert_eq!(fake.calls(), 3);
        // The forced read restarted the TTL.
        assert_eq!(key(&get(&core, &fake).await.unwrap()), "sk-three");
        assert_eq!(fake.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_after_ttl_keeps_the_old_value_for_an_interval() {
        let (core, fake) = setup();
        fake.answer(Ok("sk-one"));
        get(&core, &fake).await.unwrap();
        tokio::time::advance(TTL).await;
        fake.answer(Err(unreachable));
        assert_eq!(key(&get(&core, &fake).await.unwrap()), "sk-one");
        assert_eq!(key(&get(&core, &fake).await.unwrap()), "sk-one");
        assert_eq!(fake.calls(), 2);
        tokio::time::advance(FLOOR).await;
        fake.answer(Ok("sk-two"));
        assert_eq!(key(&get(&core, &fake).await.unwrap()), "sk-two");
        assert_eq!(fake.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_with_nothing_cached_is_an_error() {
        let (core, fake) = setup();
        fake.answer(Err(unreachable));
        let err = get(&core, &fake).await.unwrap_err();
        assert!(err.is_transient() && err.to_string().contains(ARN), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn arns_are_cached_apart() {
        let (core, fake) = setup();
        fake.answer(Ok("sk-one"));
        for arn in ["arn:a", "arn:b", "arn:a"] {
            core.resolve(arn, false, || fake.fetch()).await.unwrap();
        }
        assert_eq!(fake.calls(), 2);
    }

    fn setup() -> (Arc<CacheCore>, Arc<Fake>) {
        (Arc::new(CacheCore::new(TTL, FLOOR)), Arc::default())
    }

    async fn get(core: &CacheCore, fake: &Fake) -> Result<Arc<Secret>, SecretsError> {
        core.resolve(ARN, false, || fake.fetch()).await
    }

    async fn refresh(core: &CacheCore, fake: &Fake) -> Result<Arc<Secret>, SecretsError> {
        core.resolve(ARN, true, || fake.fetch()).await
    }

    /// `n` callers at once, each on its own task.
    async fn together(
        core: &Arc<CacheCore>,
        fake: &Arc<Fake>,
        n: usize,
        force: bool,
    ) -> Vec<Result<Arc<Secret>, SecretsError>> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (core, fake) = (Arc::clone(core), Arc::clone(fake));
            set.spawn(async move { core.resolve(ARN, force, || fake.fetch()).await });
        }
        set.join_all().await
    }
}
