//! Events on the wire: the CloudEvents 1.0 envelope (structured JSON mode, the Kafka record
//! value), topic routing with dead-letter topics, and the JSON schema of every event type.

#[cfg(feature = "kafka")]
pub mod consumer;
mod envelope;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "msk")]
pub mod msk;
#[cfg(feature = "kafka")]
pub mod redrive;
pub mod schema;
mod settings;
mod topics;

pub use envelope::{CloudEvent, DecodeError, Record, SPEC_VERSION};
pub use settings::{KafkaSecurity, KafkaSettings, MSK_IAM_MECHANISM, TokenSource, TopicSpec};
pub use topics::Topics;
