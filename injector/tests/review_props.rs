//! Property tests for the network-facing parser: whatever the API server (or
//! anyone reaching the port) sends, the webhook answers and never panics.
// Test helpers outside #[test] fns: a failed setup step should panic right there.
#![allow(clippy::unwrap_used)]

mod support;

use meshlite_injector::InjectorConfig;
use meshlite_injector::webhook::Answer;
use proptest::prelude::*;
use serde_json::Value;
use support::*;

fn answer(body: &[u8]) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(webhook(InjectorConfig::default()).answer(body))
}

/// Every JSON pointer to a leaf or container in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| {
            pointers(
                c,
                format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                out,
            )
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| pointers(c, format!("{at}/{i}"), out)),
        _ => {}
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_get_an_answer(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = answer(&body);
    }

    #[test]
    fn a_fixture_with_one_value_replaced_gets_an_answer(pick in any::<prop::sample::Index>(), value in arb_json()) {
        let mut review = fixture("probes_pod.json");
        let mut all = Vec::new();
        pointers(&review, String::new(), &mut all);
        let target = all[pick.index(all.len())].clone();
        if let Some(slot) = review.pointer_mut(&target) {
            *slot = value;
        }
        match answer(&serde_json::to_vec(&review).unwrap()) {
            // A readable review is always answered for the uid it carries.
            Answer::Review(r, _) => {
                if let Some(uid) = review.pointer("/request/uid").and_then(Value::as_str) {
                    prop_assert_eq!(r.response.uid.as_str(), uid);
                }
                if r.response.allowed {
                    prop_assert!(r.response.status.is_none());
                }
            }
            Answer::BadRequest(msg) => prop_assert!(!msg.is_empty()),
        }
    }
}
