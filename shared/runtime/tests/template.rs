//! Least privilege in `template.yaml` follows the code: each function is given the settings of
//! exactly the dependencies its role uses ([`Role::uses_llm`], [`Role::uses_kafka`]) and its
//! IAM role may read exactly those secrets and, for Kafka, look up the brokers. Each MSK event
//! source reads one topic in a consumer group of its own function, sends what keeps failing to
//! that topic's `.dlq`, and its function's role is granted exactly those with IAM.

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
        .map(|statement| match statement {
            // `!If [condition, statement, NoValue]`: the statement as granted when it holds.
            Value::Tagged(t) if t.tag == "If" => &t.value[1],
            other => other,
        })
        .collect()
}

/// The names of the template's Lambda functions.
fn functions(t: &Value) -> BTreeSet<String> {
    t["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(name, _)| name.as_str().unwrap().to_owned())
        .collect()
}

/// The template text of `!Sub 'text'` or `!Sub ['text', {variables}]`.
fn sub_text(value: &Value) -> Option<String> {
    match value {
        Value::Tagged(t) if t.tag == "Sub" => match &t.value {
            Value::String(text) => Some(text.clone()),
            Value::Sequence(items) => items.first()?.as_str().map(str::to_owned),
            _ => None,
        },
        _ => None,
    }
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
    let roles = [
        ("McpServerFunction", Role::McpServer),
        ("EventProcessorFunction", Role::EventProcessor),
        ("EvolutionWorkerFunction", Role::EvolutionWorker),
        ("OutboxRelayFunction", Role::OutboxRelay),
    ];
    assert_eq!(
        functions(&t),
        roles
            .iter()
            .map(|(f, _)| (*f).to_owned())
            .collect::<BTreeSet<_>>(),
        "every function of the template has its role here"
    );
    for (function, role) in roles {
        assert_eq!(
            t["Resources"][function]["Metadata"]["BuildProperties"]["Binary"].as_str(),
            Some(role.name()),
            "{function}: built as its role's binary"
        );
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

#[test]
fn each_msk_event_source_reads_one_topic_in_its_own_group_and_dead_letters_to_its_dlq() {
    let t = template();
    let mut sources = 0;
    for function in functions(&t) {
        let resource = &t["Resources"][function.as_str()];
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap();
        let props = &resource["Properties"];
        let iam_role = tagged_text(&props["Role"], "GetAtt").unwrap();
        let granted = statements(&t, iam_role.trim_end_matches(".Arn"));
        let resources_of = |action: &str| -> BTreeSet<String> {
            granted
                .iter()
                .filter(|s| allows(s, action))
                .flat_map(|s| s["Resource"].as_sequence().into_iter().flatten())
                .filter_map(sub_text)
                .collect()
        };
        let (mut topics, mut dead, mut groups) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for (name, event) in props["Events"].as_mapping().into_iter().flatten() {
            if event["Type"].as_str() != Some("MSK") {
                continue;
            }
            sources += 1;
            let name = name.as_str().unwrap();
            let p = &event["Properties"];
            let read = p["Topics"].as_sequence().unwrap();
            assert_eq!(
                read.len(),
                1,
                "{function}.{name}: one topic per event source"
            );
            let topic = tagged_text(&read[0], "Ref").expect("a topic parameter");
            let group = format!("${{AWS::StackName}}-{binary}-${{{topic}}}");
            assert_eq!(
                sub_text(&p["ConsumerGroupId"]).as_deref(),
                Some(group.as_str()),
                "{function}.{name}: a consumer group of its own"
            );
            assert_eq!(
                sub_text(&p["DestinationConfig"]["OnFailure"]["Destination"]),
                Some(format!("kafka://${{{topic}}}.dlq")),
                "{function}.{name}: what keeps failing goes to its topic's .dlq"
            );
            assert!(
                p["FunctionResponseTypes"]
                    .as_sequence()
                    .is_some_and(|r| r.iter().any(|r| r == "ReportBatchItemFailures")),
                "{function}.{name}: the function answers with the records to deliver again"
            );
            topics.insert(format!("${{Prefix}}:topic/${{Cluster}}/${{{topic}}}"));
            dead.insert(format!("${{Prefix}}:topic/${{Cluster}}/${{{topic}}}.dlq"));
            groups.insert(format!("${{Prefix}}:group/${{Cluster}}/{group}"));
        }
        // The relay publishes every event stream (with IAM, as the function's role).
        if binary == Role::OutboxRelay.name() {
            for topic in [
                "AgentEventsTopic",
                "FeedbackEventsTopic",
                "EvolutionEventsTopic",
            ] {
                dead.insert(format!("${{Prefix}}:topic/${{Cluster}}/${{{topic}}}"));
            }
        }
        // With IAM the event source reads as the function's role: exactly its own topics, their
        // dead-letter topics and its consumer groups; its own producers write those as well.
        assert_eq!(
            resources_of("kafka-cluster:ReadData"),
            topics,
            "{function}: topics it may read"
        );
        assert_eq!(
            resources_of("kafka-cluster:WriteData"),
            dead,
            "{function}: topics it may write"
        );
        if !dead.is_empty() {
            let cluster: Vec<&Value> = granted
                .iter()
                .copied()
                .filter(|s| tagged_text(&s["Resource"], "Ref").as_deref() == Some("MskClusterArn"))
                .collect();
            for action in [
                "kafka-cluster:Connect",
                "kafka-cluster:WriteDataIdempotently",
            ] {
                assert!(
                    cluster.iter().any(|s| allows(s, action)),
                    "{function}: {action} on the cluster, for its idempotent producers over IAM"
                );
            }
        }
        assert_eq!(
            resources_of("kafka-cluster:AlterGroup"),
            groups,
            "{function}: consumer groups it may use"
        );
    }
    assert_eq!(
        sources, 3,
        "agent and feedback events (event processor), evolution events (evolution worker)"
    );
}

/// The functions' own Kafka clients authenticate as `KafkaClientAuth` says: SASL/SCRAM with the
/// Kafka secret, or MSK IAM (the mechanism the code knows as `AWS_MSK_IAM`) without it.
#[test]
fn kafka_clients_authenticate_with_scram_or_msk_iam_as_the_parameter_says() {
    let t = template();
    let mut kafka_functions = 0;
    for function in functions(&t) {
        let vars = &t["Resources"][function.as_str()]["Properties"]["Environment"]["Variables"];
        let Value::Tagged(mechanism) = &vars["KAFKA_SASL_MECHANISM"] else {
            continue;
        };
        kafka_functions += 1;
        assert_eq!(mechanism.tag, "If", "{function}");
        assert_eq!(
            mechanism.value[0].as_str(),
            Some("ClientsUseIam"),
            "{function}"
        );
        assert_eq!(
            mechanism.value[1].as_str(),
            Some(aop_events::MSK_IAM_MECHANISM),
            "{function}"
        );
        assert_eq!(
            mechanism.value[2].as_str(),
            Some("SCRAM-SHA-512"),
            "{function}"
        );
        let Value::Tagged(secret) = &vars["KAFKA_SECRET_ARN"] else {
            panic!("{function}: KAFKA_SECRET_ARN depends on KafkaClientAuth");
        };
        assert_eq!(
            secret.value[0].as_str(),
            Some("ClientsUseIam"),
            "{function}"
        );
        assert_eq!(
            secret.value[1].as_str(),
            Some(""),
            "{function}: no secret with IAM"
        );
    }
    assert_eq!(
        kafka_functions, 3,
        "the relay, the event processor, the evolution worker"
    );
}

/// One iteration per invocation, and a step that stops starting model calls in time for its
/// last call to end inside the function's timeout.
#[test]
fn the_evolution_worker_ends_a_step_inside_its_timeout() {
    let t = template();
    let props = &t["Resources"]["EvolutionWorkerFunction"]["Properties"];
    let timeout = props["Timeout"].as_u64().unwrap();
    assert!(timeout <= 900, "Lambda's limit is 900 s, not {timeout}");
    let env = &props["Environment"]["Variables"];
    let seconds = |name: &str| -> u64 {
        env[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} is set"))
            .parse()
            .unwrap()
    };
    let step = seconds("AOP_EVOLUTION_STEP_SECONDS");
    let call = seconds("AOP_EVOLUTION_CALL_TIMEOUT_SECONDS");
    assert!(
        step + call + 60 <= timeout,
        "a step of {step} s plus a last call of {call} s leaves a minute of the {timeout} s"
    );
    let source = &props["Events"]["EvolutionEvents"]["Properties"];
    assert_eq!(source["BatchSize"].as_u64(), Some(1));
}

/// `sam build` runs `cargo lambda build --release` in each function's `CodeUri`, where cargo
/// reads `.cargo/config.toml`: every function is built for size there (`aop`, built from the
/// workspace root, is not).
#[test]
fn each_function_is_built_for_size_where_sam_builds_it() {
    let t = template();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for name in functions(&t) {
        let function = &t["Resources"][name.as_str()];
        assert_eq!(
            function["Metadata"]["BuildMethod"].as_str(),
            Some("rust-cargolambda"),
            "{name} is built by cargo lambda"
        );
        let dir = function["Properties"]["CodeUri"].as_str().unwrap();
        let path = format!("{root}/{dir}/.cargo/config.toml");
        let config = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{name}: {path} is not readable: {e}"));
        let release: Vec<&str> = config
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "[profile.release]")
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .collect();
        assert!(
            release.contains(&"opt-level = \"s\""),
            "{name}: {path} builds the release profile with opt-level \"s\": {release:?}"
        );
    }
}
