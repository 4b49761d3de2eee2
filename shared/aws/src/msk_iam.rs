//! MSK IAM authentication: the SASL `OAUTHBEARER` token MSK accepts from IAM principals.
//!
//! The token is what AWS's signer libraries (`aws-msk-iam-sasl-signer` and its Java, Python and
//! Go siblings) produce: the URL `https://kafka.<region>.amazonaws.com/?Action=kafka-cluster:Connect`
//! presigned with SigV4 (service `kafka-cluster`, valid 900 s), then a `User-Agent` parameter,
//! the whole URL base64url-encoded without padding. The signing is `aws-sigv4`'s, the AWS SDK's
//! own implementation; the signer crate itself is not used because it switches on the SDK's
//! default HTTPS client (a long aws-lc-sys C build this workspace avoids) and reads the clock
//! itself, so its tokens cannot be checked in a test.
//!
//! Kafka clients ask for a token from librdkafka's threads, synchronously; [`MskIamTokens`]
//! keeps the current credentials in memory for that and renews them in the background before
//! they expire (Lambda's come from the environment; an instance or task role's are rotated).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::sdk;

/// How long a token is valid: MSK's limit, and what the official signers use.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// Credentials are read again this long before they expire, and at least this often.
const RENEW_AHEAD: Duration = Duration::from_secs(300);
const USER_AGENT: &str = concat!("aop/", env!("CARGO_PKG_VERSION"));

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
pub enum MskIamError {
    #[error("no AWS credentials for MSK IAM authentication: {0}")]
    Credentials(String),
    #[error("cannot sign the MSK IAM token: {0}")]
    Signing(String),
    #[error(transparent)]
    Config(#[from] sdk::AwsConfigError),
}

/// A token and when it expires (milliseconds since the Unix epoch).
#[derive(Clone, PartialEq, Eq)]
pub struct MskToken {
    pub token: String,
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for MskToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a bearer credential for its lifetime.
        f.debug_struct("MskToken")
            .field("token", &"***")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// The MSK IAM token for `credentials` in `region` at `now`.
///
/// # Errors
/// `Signing` when the request cannot be signed (a malformed region).
pub fn auth_token(
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<MskToken, MskIamError> {
    let signing = |e: &dyn std::fmt::Display| MskIamError::Signing(e.to_string());
    let mut url = url::Url::parse(&format!("https://kafka.{region}.amazonaws.com/"))
        .map_err(|e| signing(&e))?;
    url.query_pairs_mut()
        .append_pair("Action", "kafka-cluster:Connect");
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("kafka-cluster")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| signing(&e))?;
    let request = SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::empty(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| signing(&e))?;
    let (instructions, _) = sign(request, &params.into())
        .map_err(|e| signing(&e))?
        .into_parts();
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in instructions.params() {
            query.append_pair(name, value);
        }
        query.append_pair("User-Agent", USER_AGENT);
    }
    // X-Amz-Date counts whole seconds: the token expires 900 s after that second.
    let signed_at = now
        .duration_since(UNIX_EPOCH)
        .map_err(|e| signing(&e))?
        .as_secs();
    let expires = signed_at + TOKEN_LIFETIME.as_secs();
    Ok(MskToken {
        token: URL_SAFE_NO_PAD.encode(url.as_str()),
        expires_at_ms: i64::try_from(expires.saturating_mul(1000)).unwrap_or(i64::MAX),
    })
}

/// Tokens for the Kafka clients of one process: the region, and credentials kept fresh.
pub struct MskIamTokens {
    region: String,
    credentials: RwLock<Credentials>,
    provider: SharedCredentialsProvider,
}

impl std::fmt::Debug for MskIamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MskIamTokens")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl MskIamTokens {
    /// Reads credentials the way the AWS CLI does (environment, profile, container or instance
    /// role) and renews them in the background until the process ends.
    ///
    /// # Errors
    /// `Config` without a region; `Credentials` when none can be found.
    pub async fn from_env() -> Result<Arc<Self>, MskIamError> {
        let config = sdk::load_sdk_config().await?;
        let region = config
            .region()
            .map(ToString::to_string)
            .ok_or(sdk::AwsConfigError::MissingRegion)?;
        let provider = config.credentials_provider().ok_or_else(|| {
            MskIamError::Credentials("the AWS SDK found no credentials provider".into())
        })?;
        let tokens = Arc::new(Self::new(region, provider).await?);
        tokens.renew_in_background();
        Ok(tokens)
    }

    /// Tokens from `provider`'s credentials, read once now.
    ///
    /// # Errors
    /// `Credentials` when the provider has none.
    pub async fn new(
        region: String,
        provider: SharedCredentialsProvider,
    ) -> Result<Self, MskIamError> {
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| MskIamError::Credentials(e.to_string()))?;
        Ok(Self {
            region,
            credentials: RwLock::new(credentials),
            provider,
        })
    }

    /// Tokens signed with fixed credentials (tests, or credentials from elsewhere).
    pub fn with_credentials(region: String, credentials: Credentials) -> Self {
        Self {
            region,
            credentials: RwLock::new(credentials.clone()),
            provider: SharedCredentialsProvider::new(credentials),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// A token signed now with the current credentials.
    ///
    /// # Errors
    /// `Signing` as [`auth_token`].
    pub fn token(&self) -> Result<MskToken, MskIamError> {
        let credentials = self
            .credentials
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        auth_token(&self.region, &credentials, SystemTime::now())
    }

    fn renew_in_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let wait = weak.upgrade().map_or(Duration::ZERO, |t| t.next_renewal());
                tokio::time::sleep(wait).await;
                let Some(tokens) = weak.upgrade() else { return };
                match tokens.provider.provide_credentials().await {
                    Ok(fresh) => {
                        *tokens
                            .credentials
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                    }
                    // The credentials held keep working until they expire; try again soon.
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the AWS credentials for MSK IAM authentication")
                    }
                }
            }
        });
    }

    /// How long until the credentials should be read again.
    fn next_renewal(&self) -> Duration {
        let expiry = self
            .credentials
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .expiry();
        expiry
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .map_or(RENEW_AHEAD, |left| {
                left.saturating_sub(RENEW_AHEAD)
                    .clamp(Duration::from_secs(10), RENEW_AHEAD)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> (Credentials, SystemTime) {
        (
            Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                Some("SESSIONTOKEN".into()),
                None,
                "test",
            ),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
    }

    fn query(token: &str) -> Vec<(String, String)> {
        let url = String::from_utf8(URL_SAFE_NO_PAD.decode(token).unwrap()).unwrap();
        let url = url::Url::parse(&url).unwrap();
        assert_eq!(url.host_str(), Some("kafka.us-east-1.amazonaws.com"));
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn a_token_is_the_presigned_connect_url_msk_expects() {
        let (credentials, now) = fixed();
        let t = auth_token("us-east-1", &credentials, now).unwrap();
        assert_eq!(t.expires_at_ms, 1_700_000_900_000);
        assert!(
            !t.token.contains(['=', '+', '/']),
            "base64url without padding"
        );
        let q = query(&t.token);
        let get = |name: &str| {
            q.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {name} in {q:?}"))
        };
        assert_eq!(get("Action"), "kafka-cluster:Connect");
        assert_eq!(get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
        assert_eq!(
            get("X-Amz-Credential"),
            "AKIDEXAMPLE/20231114/us-east-1/kafka-cluster/aws4_request"
        );
        assert_eq!(get("X-Amz-Date"), "20231114T221320Z");
        assert_eq!(get("X-Amz-Expires"), "900");
        assert_eq!(get("X-Amz-SignedHeaders"), "host");
        assert_eq!(get("X-Amz-Security-Token"), "SESSIONTOKEN");
        // Computed independently (Python's hmac/hashlib over the SigV4 canonical request).
        assert_eq!(
            get("X-Amz-Signature"),
            "21a84e6eab3ed9bdda4d03ed6f9377ba9c28eb7d19c6f2b06718a0b6a67042f6"
        );
        assert!(get("User-Agent").starts_with("aop/"));
        assert_eq!(q.last().unwrap().0, "User-Agent", "added after signing");
    }

    #[test]
    fn another_second_or_secret_signs_differently() {
        let (credentials, now) = fixed();
        let a = auth_token("us-east-1", &credentials, now).unwrap();
        let later = auth_token("us-east-1", &credentials, now + Duration::from_secs(1)).unwrap();
        assert_ne!(a.token, later.token);
        assert_eq!(later.expires_at_ms, a.expires_at_ms + 1000);
        let other = Credentials::new("AKIDEXAMPLE", "another", None, None, "test");
        let b = auth_token("us-east-1", &other, now).unwrap();
        assert_ne!(
            query(&a.token).iter().find(|(k, _)| k == "X-Amz-Signature"),
            query(&b.token).iter().find(|(k, _)| k == "X-Amz-Signature")
        );
        assert!(
            !query(&b.token)
                .iter()
                .any(|(k, _)| k == "X-Amz-Security-Token")
        );
        assert!(
            !format!("{a:?}").contains(&a.token),
            "Debug hides the token"
        );
    }

    #[tokio::test]
    async fn tokens_come_from_the_providers_credentials() {
        let (credentials, _) = fixed();
        let tokens = MskIamTokens::new(
            "eu-west-1".into(),
            SharedCredentialsProvider::new(credentials),
        )
        .await
        .unwrap();
        let t = tokens.token().unwrap();
        let url = String::from_utf8(URL_SAFE_NO_PAD.decode(&t.token).unwrap()).unwrap();
        assert!(
            url.starts_with(
                "https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect&"
            ),
            "{url}"
        );
        assert!(url.contains("AKIDEXAMPLE%2F"), "{url}");
        let now_ms = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        assert!((t.expires_at_ms - now_ms - 900_000).abs() < 2_000);
    }
}
