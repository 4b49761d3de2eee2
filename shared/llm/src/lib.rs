//! The model port on `async-openai`: Chat Completions with function tools against any
//! OpenAI-compatible endpoint (OpenAI, Azure's compatible endpoint, Ollama, vLLM, LM Studio).
//!
//! Each HTTP attempt is one request: the crate's own retry layer is replaced, because it sleeps
//! for whatever `Retry-After` says regardless of our deadline. Here transient failures (429,
//! 408, 5xx, timeouts, connection errors) are retried with backoff inside the caller's deadline,
//! honouring `Retry-After` when it fits; other 4xx reach the caller at once with the provider's
//! message. The API key is never part of an error or a log line.

#[cfg(feature = "client")]
mod classify;
#[cfg(feature = "client")]
mod client;
mod settings;
#[cfg(feature = "client")]
mod wire;

#[cfg(feature = "client")]
pub use client::{OpenAiChatModel, SetupError};
pub use settings::OpenAiSettings;
