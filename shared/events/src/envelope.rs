//! The CloudEvents 1.0 envelope in structured JSON mode, with the `correlationid` and
//! `traceparent` extensions. Decoding ignores unknown attributes, so producers can add some.

use aop_core::events::DataError;
use aop_core::session::InteractionId;
use aop_core::time::{parse_rfc3339, rfc3339};
use aop_core::{AgentId, DomainEvent, EventData, EventStub, EventType};
use serde::{Deserialize, Serialize};

pub const SPEC_VERSION: &str = "1.0";
/// `source` of every event the platform produces.
pub const SOURCE: &str = "urn:aop:platform";

/// A CloudEvent as it travels as a Kafka record value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The agent id: also the record key, so an agent's events stay in order.
    pub subject: String,
    pub datacontenttype: String,
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// W3C trace context of the request that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A record value: an event, or the stub of one that travelled without its data.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Event(Box<DomainEvent>),
    Stub(EventStub),
}

/// Why bytes are not one of our events.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a CloudEvent in JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported specversion '{0}'")]
    SpecVersion(String),
    #[error("unknown event type '{0}'")]
    UnknownType(String),
    #[error("bad subject: {0}")]
    Subject(String),
    #[error("bad interaction id in a stub: {0}")]
    Reference(String),
    #[error("bad time '{0}': expected RFC 3339 UTC")]
    Time(String),
    #[error(transparent)]
    Data(#[from] DataError),
}

impl CloudEvent {
    /// The envelope of a domain event.
    ///
    /// # Errors
    /// When the event's data cannot be written as JSON.
    pub fn from_domain(
        event: &DomainEvent,
        traceparent: Option<String>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            specversion: SPEC_VERSION.to_owned(),
            id: event.id.clone(),
            source: SOURCE.to_owned(),
            event_type: event.event_type().as_str().to_owned(),
            time: rfc3339(event.time),
            subject: event.subject.to_string(),
            datacontenttype: "application/json".to_owned(),
            data: event.data.to_json()?,
            correlationid: event.correlation_id.clone(),
            traceparent,
        })
    }

    /// The envelope of `event` with `null` data, for when its data cannot travel.
    pub fn without_data(event: &DomainEvent) -> Self {
        Self {
            specversion: SPEC_VERSION.to_owned(),
            id: event.id.clone(),
            source: SOURCE.to_owned(),
            event_type: event.event_type().as_str().to_owned(),
            time: rfc3339(event.time),
            subject: event.subject.to_string(),
            datacontenttype: "application/json".to_owned(),
            data: serde_json::Value::Null,
            correlationid: event.correlation_id.clone(),
            traceparent: None,
        }
    }

    /// The record value.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a record value.
    ///
    /// # Errors
    /// `DecodeError` saying what is wrong with it.
    pub fn decode(bytes: &[u8]) -> Result<DomainEvent, DecodeError> {
        let ce: Self = serde_json::from_slice(bytes)?;
        ce.into_domain()
    }

    /// Parses a record value that may be an event that travelled without its data (see
    /// `kafka::record_value`): such a one comes back as its stub.
    ///
    /// # Errors
    /// As [`CloudEvent::decode`].
    pub fn decode_record(bytes: &[u8]) -> Result<Record, DecodeError> {
        let ce: Self = serde_json::from_slice(bytes)?;
        if ce.data.get("truncated") != Some(&serde_json::Value::Bool(true)) {
            return ce.into_domain().map(|e| Record::Event(Box::new(e)));
        }
        if ce.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(ce.specversion));
        }
        let event_type =
            EventType::parse(&ce.event_type).ok_or(DecodeError::UnknownType(ce.event_type))?;
        let interaction_id = ce
            .data
            .get("interaction_id")
            .and_then(serde_json::Value::as_str)
            .map(|id| InteractionId::try_from(id.to_owned()).map_err(DecodeError::Reference))
            .transpose()?;
        Ok(Record::Stub(EventStub {
            id: ce.id,
            event_type,
            subject: AgentId::try_from(ce.subject).map_err(DecodeError::Subject)?,
            time: parse_rfc3339(&ce.time).ok_or(DecodeError::Time(ce.time))?,
            correlation_id: ce.correlationid,
            interaction_id,
        }))
    }

    /// # Errors
    /// As [`CloudEvent::decode`].
    pub fn into_domain(self) -> Result<DomainEvent, DecodeError> {
        if self.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(self.specversion));
        }
        let event_type =
            EventType::parse(&self.event_type).ok_or(DecodeError::UnknownType(self.event_type))?;
        let subject = AgentId::try_from(self.subject).map_err(DecodeError::Subject)?;
        let time = parse_rfc3339(&self.time).ok_or(DecodeError::Time(self.time))?;
        Ok(DomainEvent {
            id: self.id,
            subject,
            time,
            data: EventData::from_json(event_type, self.data)?,
            correlation_id: self.correlationid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> DomainEvent {
        let agent_id = AgentId::parse("agent_id", "agt_1").unwrap();
        let feedback = aop_core::feedback::Feedback {
            submitted_by: None,
            feedback_id: aop_core::session::FeedbackId::generate(),
            agent_id: agent_id.clone(),
            version: 1,
            session_id: None,
            interaction_id: None,
            ratings: Vec::new(),
            comments: None,
            categories: Vec::new(),
            user_id: "u".into(),
            created_at: 1,
        };
        let mut e = DomainEvent::new(
            &agent_id,
            1_795_759_698_123,
            aop_core::events::payload::FeedbackSubmitted { feedback },
        );
        e.correlation_id = Some("req-9".into());
        e
    }

    #[test]
    fn a_domain_event_round_trips_through_the_envelope() {
        let e = event();
        let ce = CloudEvent::from_domain(&e, Some("00-abc-def-01".into())).unwrap();
        assert_eq!(ce.time, "2026-11-27T06:08:18.123Z");
        assert_eq!(ce.event_type, "feedback.submitted");
        assert_eq!(ce.subject, "agt_1");
        let back = CloudEvent::decode(&ce.to_bytes()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn unknown_attributes_are_ignored_and_bad_ones_named() {
        let mut v = serde_json::to_value(CloudEvent::from_domain(&event(), None).unwrap()).unwrap();
        v["newattribute"] = serde_json::json!("ignored");
        assert!(CloudEvent::decode(v.to_string().as_bytes()).is_ok());
        v["type"] = serde_json::json!("agent.exploded");
        let err = CloudEvent::decode(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "unknown event type 'agent.exploded'");
        assert!(CloudEvent::decode(b"not json").is_err());
        v["type"] = serde_json::json!("agent.created");
        let err = CloudEvent::decode(v.to_string().as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("agent.created data does not decode"),
            "feedback data is not an agent.created payload: {err}"
        );
        v["type"] = serde_json::json!("feedback.submitted");
        v["time"] = serde_json::json!("yesterday");
        assert!(matches!(
            CloudEvent::decode(v.to_string().as_bytes()),
            Err(DecodeError::Time(_))
        ));
    }

    #[test]
    fn times_parse_back_exactly() {
        for ms in [0, 951_782_400_000, 1_795_759_698_123, 4_102_444_800_999] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms), "{ms}");
        }
        assert_eq!(
            parse_rfc3339("2026-11-27T06:08:18Z"),
            Some(1_795_759_698_000)
        );
    }
}
