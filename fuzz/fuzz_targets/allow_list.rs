//! The `meshlite.io/allow` annotation: `AllowList::parse` on the value and
//! `allow_list_from_annotations` on a downward-API annotations file.
//!
//! Every parsed entry prints back as text that parses to the same entry, and a
//! `*` matches any run of characters: the identity made by filling each `*` of
//! an entry with letters (when that is a valid identity) is allowed by it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_contract::{AllowList, AllowPattern, SpiffeId, TrustDomain};
use meshlite_proxy::policy::allow_list_from_annotations;

fuzz_target!(|s: &str| {
    let local = TrustDomain::default();
    if let Ok(list) = AllowList::parse(s) {
        check(&list, &local);
    }
    if let Ok(list) = allow_list_from_annotations(s) {
        check(&list, &local);
    }
});

fn check(list: &AllowList, local: &TrustDomain) {
    let AllowList::Only(patterns) = list else {
        return;
    };
    for pattern in patterns {
        let text = pattern.to_string();
        assert_eq!(AllowPattern::parse(&text).as_ref(), Ok(pattern));
        // The full form names its trust domain; the short form means `local`.
        let uri = match text.strip_prefix("ns/") {
            Some(_) => format!("spiffe://{local}/{text}"),
            None => text.clone(),
        };
        for fill in ["", "a", "x-y"] {
            if let Ok(id) = uri.replace('*', fill).parse::<SpiffeId>() {
                assert!(pattern.matches(&id, local), "{text:?} does not match {id}");
                assert!(list.allows(&id, local));
            }
        }
    }
}
