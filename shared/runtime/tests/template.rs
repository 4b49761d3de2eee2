//! Least privilege in `template.yaml` follows the code: each function is given the settings of
//! exactly the dependencies its role uses ([`Role::uses_llm`], [`Role::uses_kafka`]) and its
//! IAM role may read exactly those secrets and, for Kafka, look up the brokers.

use std::collections::BTreeSet;

use aop_runtime::Role;
use serde_yaml_ng::Value;

fn template() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The text of a tagged value (`!Ref X`, `!GetAtt X.Arn`), or of a plain string.
fn tagged_text(value: &Value, tag: &str) -> Option<String> {
    match value {
        Value::Tagged(t) if t.tag == tag => t.value.as_str().map(str::to_owned),
        _ => None,
    }
}

/// Every name a value references with `!Ref`, however deeply nested (`!If`, lists).
fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Tagged(t) if t.tag == "Ref" => {
            if let Some(name) = t.value.as_str() {
                out.insert(name.to_owned());
            }
        }
        Value::Tagged(t) => refs(&t.value, out),
        Value::Sequence(items) => items.iter().for_each(|i| refs(i, out)),
        Value::Mapping(map) => map.values().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// Every statement of the policies attached to an IAM role, managed and inline.
fn statements<'a>(t: &'a Value, role: &str) -> Vec<&'a Value> {
    let resources = &t["Resources"];
    let props = &resources[role]["Properties"];
    let mut documents = Vec::new();
    for managed in props["ManagedPolicyArns"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let name = tagged_text(managed, "Ref").expect("a managed policy of the stack");
        documents.push(&resources[name.as_str()]["Properties"]["PolicyDocument"]);
    }
    for inline in props["Policies"].as_sequence().into_iter().flatten() {
        let inline = match inline {
            // `!If [condition, policy, NoValue]`: the policy as granted when the condition holds.
            Value::Tagged(t) if t.tag == "If" => &t.value[1],
            other => other,
        };
        documents.push(&inline["PolicyDocument"]);
    }
    documents
        .into_iter()
        .flat_map(|d| d["Statement"].as_sequence().into_iter().flatten())
        .collect()
}

fn allows(statement: &Value, action: &str) -> bool {
    match &statement["Action"] {
        Value::String(a) => a == action,
        Value::Sequence(items) => items.iter().any(|a| a.as_str() == Some(action)),
        _ => false,
    }
}

#[test]
fn each_function_is_configured_and_granted_only_what_its_role_uses() {
    let t = template();
    let globals: BTreeSet<String> = t["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    for (function, role) in [
        ("McpServerFunction", Role::McpServer),
        ("EventProcessorFunction", Role::EventProcessor),
        ("OutboxRelayFunction", Role::OutboxRelay),
    ] {
        let props = &t["Resources"][function]["Properties"];
        let mut env = globals.clone();
        if let Some(vars) = props["Environment"]["Variables"].as_mapping() {
            env.extend(vars.keys().map(|k| k.as_str().unwrap().to_owned()));
        }
        assert!(
            env.contains("NEO4J_SECRET_ARN"),
            "{function}: every role uses the store"
        );
        assert_eq!(
            env.contains("OPENAI_SECRET_ARN"),
            role.uses_llm(),
            "{function}: the model's secret is configured exactly when the role calls the model"
        );
        assert_eq!(
            env.contains("KAFKA_SECRET_ARN") && env.contains("MSK_CLUSTER_ARN"),
            role.uses_kafka(),
            "{function}: Kafka is configured exactly when the role talks to Kafka"
        );

        let iam_role = tagged_text(&props["Role"], "GetAtt").unwrap();
        let iam_role = iam_role.trim_end_matches(".Arn");
        let granted = statements(&t, iam_role);
        let mut secrets = BTreeSet::new();
        for s in granted
            .iter()
            .filter(|s| allows(s, "secretsmanager:GetSecretValue"))
        {
            refs(&s["Resource"], &mut secrets);
        }
        let mut expected = BTreeSet::from(["Neo4jSecretArn".to_owned()]);
        if role.uses_llm() {
            expected.insert("OpenAISecretArn".to_owned());
        }
        if role.uses_kafka() {
            expected.insert("KafkaSecretArn".to_owned());
        }
        assert_eq!(
            secrets, expected,
            "{function}: the secrets its role may read"
        );
        assert_eq!(
            granted
                .iter()
                .any(|s| allows(s, "kafka:GetBootstrapBrokers")),
            role.uses_kafka(),
            "{function}: only Kafka roles look up the brokers"
        );
        assert_eq!(
            granted.iter().any(|s| allows(s, "kms:Decrypt")),
            role.uses_kafka(),
            "{function}: only Kafka roles decrypt the Kafka secret's key"
        );
    }
}
