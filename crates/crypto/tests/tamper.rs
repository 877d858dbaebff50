//! Every single-bit flip of a sealed envelope must be rejected, and decoders fed
//! random or truncated bytes must return errors, never panic.

use asclepios_crypto::abe::{setup, Ciphertext, MasterSecretKey, PublicKey, UserKey};
use asclepios_crypto::envelope::{open, seal, Envelope, KeyWrapper, RecordContext, SealedBody};
use asclepios_crypto::Policy;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const OBSERVATION: &[u8] = br#"{"resourceType":"Observation","id":"bp-1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":128,"unit":"mm[Hg]"}}"#;

fn sealed() -> (UserKey, Vec<u8>, PublicKey, MasterSecretKey) {
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let (mpk, msk) = setup(&mut rng);
    let key = msk.keygen(&["role:doctor"], &mut rng).unwrap();
    let policy = Policy::parse("role:doctor or patient:7f3a").unwrap();
    let context = RecordContext {
        record_id: "bp-1".into(),
        version: 1,
    };
    let env = seal(&mpk, &policy, &context, OBSERVATION, &mut rng).unwrap();
    (key, env.to_bytes(), mpk, msk)
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let (key, bytes, _, _) = sealed();
    let env = Envelope::from_bytes(&bytes).unwrap();
    assert_eq!(&open(&key, &env).unwrap().payload[..], OBSERVATION);

    let bits = bytes.len() * 8;
    let accepted: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (key, bytes) = (&key, &bytes);
                s.spawn(move || {
                    (w..bits)
                        .step_by(2)
                        .filter(|&bit| {
                            let mut t = bytes.clone();
                            t[bit / 8] ^= 1 << (bit % 8);
                            Envelope::from_bytes(&t)
                                .ok()
                                .is_some_and(|e| open(key, &e).is_ok())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        accepted.is_empty(),
        "bit flips accepted: {accepted:?} of {bits}"
    );
}

#[test]
fn truncations_are_errors() {
    let (key, bytes, mpk, msk) = sealed();
    let env = Envelope::from_bytes(&bytes).unwrap();
    let objects = [
        bytes.clone(),
        env.body.to_bytes(),
        env.wrapper.to_bytes(),
        mpk.to_bytes(),
        msk.to_bytes().to_vec(),
        key.to_bytes().to_vec(),
    ];
    for object in &objects {
        for len in 0..object.len() {
            let cut = &object[..len];
            assert!(Envelope::from_bytes(cut).is_err());
            assert!(SealedBody::from_bytes(cut).is_err());
            assert!(KeyWrapper::from_bytes(cut).is_err());
            assert!(Ciphertext::from_bytes(cut).is_err());
            assert!(PublicKey::from_bytes(cut).is_err());
            assert!(MasterSecretKey::from_bytes(cut).is_err());
            assert!(UserKey::from_bytes(cut).is_err());
        }
        // And one byte too many.
        let mut long = object.clone();
        long.push(0);
        assert!(Envelope::from_bytes(&long).is_err());
        assert!(UserKey::from_bytes(&long).is_err());
    }
}

/// Runs every decoder on `bytes`; none may panic.
fn decode_all(bytes: &[u8]) {
    let _ = Envelope::from_bytes(bytes);
    let _ = SealedBody::from_bytes(bytes);
    let _ = KeyWrapper::from_bytes(bytes);
    let _ = Ciphertext::from_bytes(bytes);
    let _ = PublicKey::from_bytes(bytes);
    let _ = MasterSecretKey::from_bytes(bytes);
    let _ = UserKey::from_bytes(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Policy::parse(text);
    }
}

proptest! {
    #[test]
    fn random_bytes_are_errors(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
        prop_assert!(Envelope::from_bytes(&bytes).is_err());
    }

    #[test]
    fn random_bytes_behind_a_valid_header_are_errors(
        kind in 1u8..=7,
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut bytes = b"ASCL".to_vec();
        bytes.extend_from_slice(&[kind, 1]);
        bytes.extend_from_slice(&body);
        decode_all(&bytes);
    }

    #[test]
    fn random_policy_text_never_panics(text in "\\PC{0,200}") {
        let _ = Policy::parse(&text);
    }

    #[test]
    fn policy_like_text_never_panics(text in "[a-z0-9:() ,\"\\\\]{0,120}") {
        if let Ok(p) = Policy::parse(&text) {
            prop_assert_eq!(Policy::parse(&p.to_string()).unwrap(), p);
        }
    }
}

#[test]
fn random_bytes_in_a_field_are_errors() {
    // Corrupt each length-prefixed region with random content at random places.
    let (_, bytes, _, _) = sealed();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    use rand_chacha::rand_core::RngCore;
    for _ in 0..2000 {
        let mut t = bytes.clone();
        let at = (rng.next_u32() as usize) % t.len();
        let n = 1 + (rng.next_u32() as usize) % 16;
        for b in t.iter_mut().skip(at).take(n) {
            *b = rng.next_u32() as u8;
        }
        decode_all(&t);
    }
}

/// Found by the `abe_decoders` fuzz target: a user key whose attributes were
/// listed out of order decoded, and re-encoded to other bytes. One key has
/// one encoding: attributes ascending, none repeated.
#[test]
fn user_keys_decode_only_in_canonical_order() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let (_, msk) = setup(&mut rng);
    let key = msk.keygen(&["dept:a", "role:b"], &mut rng).unwrap();
    let bytes = key.to_bytes().to_vec();
    assert_eq!(
        UserKey::from_bytes(&bytes).unwrap().to_bytes()[..],
        bytes[..]
    );
    // Each attribute's block: length, name, its occurrences' G1 points.
    let at = |name: &[u8]| bytes.windows(name.len()).position(|w| w == name).unwrap() - 2;
    let first = at(b"dept:a");
    let block = at(b"role:b") - first;
    assert_eq!(bytes.len(), first + 2 * block);
    let (a, b) = bytes[first..].split_at(block);
    let swapped = [&bytes[..first], b, a].concat();
    assert!(UserKey::from_bytes(&swapped).is_err());
    let repeated = [&bytes[..first], a, a].concat();
    assert!(UserKey::from_bytes(&repeated).is_err());
}
