//! Every decoder and parser that takes bytes or text from outside, fed what a broken or hostile
//! writer could send: arbitrary bytes, and real inputs (the golden payloads, whole envelopes,
//! compose files) with bytes changed, cut short or spliced. Nothing may panic; each answers
//! with a value or a clear error. A bounded run is part of the test command
//! (`PROPTEST_CASES` scales it); every input that once failed is kept in
//! `fuzz.proptest-regressions` beside this file and replayed first.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;

use events::aggregate::EventPayload;
use events::envelope::{Envelope, Metadata};

/// The golden payloads: `(event type, version, bytes)`.
fn golden() -> Vec<(String, u16, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the fixtures") {
        let path = entry.expect("a fixture").path();
        let name = path.file_stem().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let Some((event_type, version)) = name.split_once('@') else { continue };
        let Ok(version) = version.parse() else { continue };
        let text = std::fs::read_to_string(&path).expect("a readable fixture");
        all.push((event_type.to_owned(), version, hex::decode(text.trim()).expect("hex")));
    }
    all.sort();
    all
}

/// Reads `bytes` as a payload of `event_type` at `version`, by every payload type there is.
fn read_payload(event_type: &str, version: u16, bytes: &[u8]) {
    let _ = events::application::ApplicationEvent::from_payload(event_type, version, bytes);
    let _ = events::deployment::DeploymentEvent::from_payload(event_type, version, bytes);
    let _ = events::deployment_node::DeploymentNodeEvent::from_payload(event_type, version, bytes);
    let _ = events::node::NodeEvent::from_payload(event_type, version, bytes);
    let _ = events::tenant::TenantEvent::from_payload(event_type, version, bytes);
    let _ = events::token::TokenEvent::from_payload(event_type, version, bytes);
    let _ = events::work::NodeWork::from_payload(event_type, version, bytes);
    let _ = events::report::NodeReport::from_payload(event_type, version, bytes);
}

/// What a fold of the read models does with an event that fits: it must not panic either.
fn fold(subject: &str, bytes: &[u8]) {
    let Ok(envelope) = events::fit::read(subject, bytes) else { return };
    let _ = envelope.verify();
    if let Ok(fact) = events::projection::Fact::of(&envelope) {
        let mut store = events::projection::MemoryStore::default();
        let _ = events::projection::fold(&mut store, &envelope, &fact);
    }
}

/// `bytes` changed as a bad link, a bad disk or a hostile writer would: a byte flipped, the
/// end cut, something spliced in.
fn mutated(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = bytes.len().max(1);
    (0..len, any::<u8>(), 0..=len, proptest::collection::vec(any::<u8>(), 0..8), 0..3u8).prop_map(
        move |(at, byte, cut, splice, how)| {
            let mut changed = bytes.clone();
            match how {
                0 => {
                    if let Some(b) = changed.get_mut(at) {
                        *b = byte;
                    }
                }
                1 => changed.truncate(cut),
                _ => {
                    let at = at.min(changed.len());
                    changed.splice(at..at, splice);
                }
            }
            changed
        },
    )
}

/// A real envelope of each golden payload, on its own subject.
fn envelopes() -> Vec<(String, Vec<u8>)> {
    let meta = Metadata {
        tenant: "acme".into(),
        actor: "ops".into(),
        correlation_id: uuid::Uuid::nil(),
        causation_id: uuid::Uuid::nil(),
    };
    golden()
        .into_iter()
        .map(|(event_type, version, payload)| {
            let prefix = event_type.split('.').next().unwrap_or_default().to_owned();
            let (aggregate_type, subject) = match prefix.as_str() {
                "report" => (events::report::AGGREGATE_TYPE, "ev.acme.node.n1.state".to_owned()),
                "work" => (events::work::AGGREGATE_TYPE, "ev.acme.node.n1.desired".to_owned()),
                "deployment_node" => ("deployment_node", "ev.acme.deployment_node.d1.n1".to_owned()),
                other => (other, format!("ev.acme.{other}.x1")),
            };
            let id = if prefix == "deployment_node" {
                "d1.n1"
            } else if aggregate_type.starts_with("node_") {
                "n1"
            } else {
                "x1"
            };
            let event = events::tenant::TenantEvent::Deleted { at: chrono::DateTime::UNIX_EPOCH };
            let mut envelope =
                Envelope::new(uuid::Uuid::nil(), chrono::DateTime::UNIX_EPOCH, aggregate_type, id, &meta, &event, None);
            (envelope.event_type, envelope.schema_version, envelope.payload) = (event_type, version, payload);
            (subject, envelope.encode())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: Some(Box::new(
        proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))), ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_on_any_subject_are_an_event_or_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..512), subject in "ev\\.[a-z]{1,3}(\\.[a-z_]{1,16}){1,3}") {
        fold(&subject, &bytes);
        let _ = events::Envelope::decode(&bytes);
    }

    #[test]
    fn a_real_envelope_damaged_is_an_event_or_a_reason((subject, bytes) in proptest::sample::select(envelopes()).prop_flat_map(|(subject, bytes)| (Just(subject), mutated(bytes)))) {
        fold(&subject, &bytes);
    }

    #[test]
    fn a_golden_payload_damaged_reads_or_is_refused((event_type, version, bytes) in proptest::sample::select(golden()).prop_flat_map(|(t, v, b)| (Just(t), Just(v), mutated(b)))) {
        read_payload(&event_type, version, &bytes);
    }

    #[test]
    fn any_payload_under_any_event_type_reads_or_is_refused(event_type in "[a-z_]{1,16}\\.[a-z_]{1,24}", version in any::<u16>(), bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        read_payload(&event_type, version, &bytes);
    }

    #[test]
    fn any_heartbeat_decodes_or_is_refused_and_its_silence_is_bounded(text in "\\PC{0,200}", interval in any::<u64>(), at in any::<i64>()) {
        let _ = serde_json::from_str::<events::telemetry::Heartbeat>(&text);
        let json = format!(r#"{{"tenant":"t","node":"n","at":"{}","interval_ms":{interval},"containers":[]}}"#,
            chrono::DateTime::from_timestamp_millis(at).map(|t| t.to_rfc3339()).unwrap_or_default());
        if let Ok(beat) = serde_json::from_str::<events::telemetry::Heartbeat>(&json) {
            prop_assert!(beat.silence() <= std::time::Duration::from_secs(3 * 3600));
        }
    }

    #[test]
    fn any_logs_cursor_or_request_decodes_or_is_refused(text in "\\PC{0,120}", json in "\\PC{0,200}") {
        if let Ok(cursor) = events::logs::decode_cursor(&text) {
            // What decodes encodes back to what decodes the same.
            let again = events::logs::encode_cursor(&cursor).map(|t| events::logs::decode_cursor(&t));
            prop_assert!(again.is_none_or(|a| a.as_ref() == Ok(&cursor)));
        }
        let _ = serde_json::from_str::<events::logs::LogsRequest>(&json);
        let _ = serde_json::from_str::<events::logs::LogsReply>(&json);
    }

    #[test]
    fn any_compose_text_parses_or_is_refused(text in compose_like()) {
        let _ = events::compose::parse(&text);
    }

    #[test]
    fn any_interpolation_is_a_text_or_a_reason(text in "([a-z ]|\\$|\\{|\\}|:|-|\\?|[A-Z_]){0,80}", value in "\\PC{0,20}") {
        let values: BTreeMap<String, String> = [("A".to_owned(), value)].into();
        let _ = events::compose::interpolate(&text, &values, "services.web.image");
    }

    #[test]
    fn any_port_volume_size_or_restart_parses_or_is_refused(text in "\\PC{0,40}", shaped in "[0-9a-z./:\\-]{0,30}") {
        for text in [&text, &shaped] {
            let _ = events::compose::parse_port(text);
            let _ = events::compose::parse_volume(text);
            let _ = events::compose::parse_size(text);
            let _ = events::compose::parse_restart(text);
            let _ = events::compose::normalize_path(text);
            let _ = events::compose::bind_policy(text);
            let _ = events::policy::registry_of(text);
        }
    }
}

/// Text shaped like a compose file: keys it knows, values with interpolation, odd indents.
fn compose_like() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("services"),
        Just("image"),
        Just("ports"),
        Just("environment"),
        Just("volumes"),
        Just("secrets"),
        Just("restart"),
        Just("depends_on"),
        Just("healthcheck"),
        Just("command"),
        Just("networks"),
        Just("mem_limit"),
        Just("cpus"),
        Just("x-extra"),
        Just("web"),
        Just("db"),
    ];
    let value = prop_oneof![
        Just("${A:-1}".to_owned()),
        Just("$${A}".to_owned()),
        Just("${A:?need}".to_owned()),
        Just("8080:80".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("- a".to_owned()),
        Just("127.0.0.1:5000/a:1".to_owned()),
        "\\PC{0,12}",
    ];
    let line = (0..6usize, key, value, any::<bool>()).prop_map(|(indent, key, value, item)| {
        format!("{}{}{key}: {value}", " ".repeat(indent * 2), if item { "- " } else { "" })
    });
    proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}
