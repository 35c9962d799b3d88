//! SPIFFE ID and trust-domain parsing.
//!
//! Parse, don't validate: whatever parses prints back as the same text, reads
//! back as the same identity (from a string and from JSON), and is allowed by
//! the allow-list entries that name it, in both the full and the short form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_contract::{AllowList, SpiffeId, TrustDomain};

fuzz_target!(|s: &str| {
    if let Ok(td) = s.parse::<TrustDomain>() {
        assert_eq!(td.as_str(), s);
    }
    let Ok(id) = s.parse::<SpiffeId>() else {
        return;
    };
    let uri = id.to_uri();
    assert_eq!(uri, s);
    assert_eq!(uri.parse::<SpiffeId>().as_ref(), Ok(&id));
    let json = serde_json::to_string(&id).expect("an identity serializes");
    assert_eq!(
        serde_json::from_str::<SpiffeId>(&json).ok().as_ref(),
        Some(&id)
    );

    let local = id.trust_domain();
    let short = format!("ns/{}/sa/{}", id.namespace(), id.service_account());
    for entry in [uri.as_str(), short.as_str()] {
        let list = AllowList::parse(entry).expect("an identity is a valid allow-list entry");
        assert!(list.allows(&id, local), "{entry:?} does not allow {id}");
    }
    assert!(AllowList::default().allows(&id, local));
    assert!(!AllowList::parse("").expect("empty list").allows(&id, local));
});
