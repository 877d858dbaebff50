//! Sealed-record decoders on arbitrary bytes: typed errors, never a panic; what
//! decodes re-encodes to the same bytes.
#![no_main]

use asclepios_crypto::envelope::{Envelope, KeyWrapper, SealedBody};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::from_bytes(data) {
        assert_eq!(env.to_bytes(), data);
    }
    if let Ok(body) = SealedBody::from_bytes(data) {
        assert_eq!(body.to_bytes(), data);
    }
    if let Ok(wrapper) = KeyWrapper::from_bytes(data) {
        assert_eq!(wrapper.to_bytes(), data);
    }
});
