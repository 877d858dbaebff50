//! Every FAME decoder on arbitrary bytes: typed errors, never a panic; what
//! decodes re-encodes to the same bytes.
#![no_main]

use asclepios_crypto::abe::{Ciphertext, MasterSecretKey, PublicKey, UserKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pk) = PublicKey::from_bytes(data) {
        assert_eq!(pk.to_bytes(), data);
    }
    if let Ok(ct) = Ciphertext::from_bytes(data) {
        assert_eq!(ct.to_bytes(), data);
    }
    if let Ok(key) = UserKey::from_bytes(data) {
        assert_eq!(&key.to_bytes()[..], data);
    }
    if let Ok(msk) = MasterSecretKey::from_bytes(data) {
        assert_eq!(&msk.to_bytes()[..], data);
    }
});
