//! API Gateway HTTP API (payload 2.0) events for the `mcp-server` binary under the Lambda
//! Runtime API emulator, built from the checked-in fixture.
#![allow(dead_code)]

use base64::Engine as _;
use lambda_emulator::LambdaEmulator;
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("../fixtures/apigw_http_v2_request.json");
pub const API_HOST: &str = "abc123.execute-api.eu-west-1.amazonaws.com";

pub struct Api {
    pub lambda: LambdaEmulator,
    pub next_id: u64,
    /// The `sub` of the JWT API Gateway's authorizer verified, as it puts it in the event;
    /// `None` for a request with no verified caller.
    pub subject: Option<String>,
}

impl Api {
    /// Requests as `emulated-user`, whom a JWT authorizer verified.
    pub fn new(lambda: LambdaEmulator) -> Self {
        Self {
            lambda,
            next_id: 0,
            subject: Some("emulated-user".to_owned()),
        }
    }
}

impl Api {
    /// Sends an API Gateway event for `method path` and returns the API Gateway response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Value {
        self.next_id += 1;
        let mut event: Value = serde_json::from_str(FIXTURE).unwrap();
        event["requestContext"]["http"]["method"] = json!(method);
        event["requestContext"]["http"]["path"] = json!(path);
        event["requestContext"]["requestId"] = json!(format!("apigw-{}", self.next_id));
        event["rawPath"] = json!(path);
        if let Some(subject) = &self.subject {
            event["requestContext"]["authorizer"] =
                json!({"jwt": {"claims": {"sub": subject}, "scopes": null}});
        }
        for (k, v) in headers {
            event["headers"][*k] = json!(v);
        }
        event["body"] = body.map_or(Value::Null, |b| json!(b.to_string()));
        self.lambda
            .invoke(event)
            .await
            .unwrap_or_else(|e| panic!("invocation failed: {e}"))
    }

    pub async fn rpc(&mut self, method: &str, params: Value) -> Value {
        let body =
            json!({"jsonrpc": "2.0", "id": self.next_id + 1, "method": method, "params": params});
        let response = self
            .request(
                "POST",
                "/mcp",
                &[("mcp-protocol-version", "2025-11-25")],
                Some(body),
            )
            .await;
        assert_eq!(response["statusCode"], 200, "{response}");
        body_json(&response)
    }
}

pub fn body_json(response: &Value) -> Value {
    let raw = response["body"].as_str().unwrap_or_default();
    let text = if response["isBase64Encoded"] == true {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .unwrap(),
        )
        .unwrap()
    } else {
        raw.to_owned()
    };
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body expected: {text}"))
}
