//! A `POST /v1/responses` body, as continuation planning sees it: its items' digests are a
//! chain (each prefix extends the one before), a continuation frame carries exactly the items
//! after the matched head, and every frame is JSON that says `response.create`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use wsbridge::continuation::{Digester, Frame, ReasoningPolicy, input_items, longest_match};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<Map<String, Value>>(data) else {
        return;
    };
    for policy in [ReasoningPolicy::Lenient, ReasoningPolicy::Strict] {
        let digester = Digester::new(policy);
        let items = input_items(&request);
        let prefixes = digester.prefixes(&items);
        assert_eq!(prefixes.len(), items.len());
        for (k, digest) in prefixes.iter().enumerate() {
            assert_eq!(*digest, digester.extend(0, &items[..=k]), "prefix digests chain");
        }
        let full: Value = serde_json::from_str(&Frame { request: &request, continuation: None }.to_json())
            .expect("the full frame is JSON");
        assert_eq!(full["type"], "response.create");
        assert!(full.get("stream").is_none() && full.get("background").is_none());
        // Pretend the head is every prefix in turn: the delta is what follows it.
        for k in 0..=items.len() {
            let head = if k == 0 { None } else { Some(prefixes[k - 1]) };
            let Some(head) = head else { continue };
            let matched = longest_match(&prefixes, |digest| digest == head).expect("its own prefix matches");
            assert!(matched <= k, "the match never reaches past the head");
            let start = digester.delta_start(&items, matched, &[]);
            let frame = Frame { request: &request, continuation: Some(("resp_fuzz", &items[start..])) };
            let frame: Value = serde_json::from_str(&frame.to_json()).expect("a continuation frame is JSON");
            assert_eq!(frame["previous_response_id"], "resp_fuzz");
            assert_eq!(frame["input"].as_array().map(Vec::len), Some(items.len() - start));
        }
    }
});
