//! The policy parser on arbitrary text: never panics, and whatever it accepts
//! prints to a canonical form that parses back to the same policy.
#![no_main]

use asclepios_crypto::lsss::SpanProgram;
use asclepios_crypto::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::parse(text) {
        let printed = policy.to_string();
        assert_eq!(Policy::parse(&printed).as_ref(), Ok(&policy));
        let msp = SpanProgram::from_policy(&policy);
        assert_eq!(msp.rows.len(), policy.leaf_count());
    }
});
