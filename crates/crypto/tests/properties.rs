//! Property tests of the policy language and the ABE scheme against a plain
//! boolean evaluator.

use std::sync::OnceLock;

use asclepios_crypto::abe::{setup, MasterSecretKey, PublicKey};
use asclepios_crypto::lsss::{reconstruction, SpanProgram};
use asclepios_crypto::policy::{Node, Policy};
use asclepios_crypto::Error;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// A small universe so that policies repeat attributes (up to the limit of
/// four occurrences) and random sets often, but not always, satisfy them.
const UNIVERSE: [&str; 10] = [
    "role:doctor",
    "role:nurse",
    "dept:cardiology",
    "ward:icu",
    "shift:night",
    "patient:7f3a",
    "org:st-mary",
    "lab:chem",
    "role:auditor",
    "\"odd name\"",
];

fn attribute() -> impl Strategy<Value = Node> {
    prop::sample::select(&UNIVERSE[..]).prop_map(|a| Node::Attr(a.trim_matches('"').to_string()))
}

/// Random policies: depth up to 4, gates of 2 to 5 operands, thresholds with
/// any valid k, at most 30 leaves.
fn policy() -> impl Strategy<Value = Policy> {
    attribute()
        .prop_recursive(4, 30, 5, |inner| {
            prop::collection::vec(inner, 2..=5).prop_flat_map(|children| {
                let n = children.len();
                prop_oneof![
                    Just(Node::And(children.clone())),
                    Just(Node::Or(children.clone())),
                    (1..=n).prop_map(move |k| Node::Threshold(k, children.clone())),
                ]
            })
        })
        .prop_filter_map("at most 30 leaves, 4 repetitions", |root| {
            Policy::new(root).ok().filter(|p| p.leaf_count() <= 30)
        })
}

fn attribute_set() -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(&UNIVERSE[..], 0..=UNIVERSE.len()).prop_map(|v| {
        v.into_iter()
            .map(|a| a.trim_matches('"').to_string())
            .collect()
    })
}

fn authority() -> &'static (PublicKey, MasterSecretKey) {
    static KEYS: OnceLock<(PublicKey, MasterSecretKey)> = OnceLock::new();
    KEYS.get_or_init(|| setup(&mut ChaCha20Rng::seed_from_u64(2017)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn printing_then_parsing_gives_the_same_policy(p in policy()) {
        let text = p.to_string();
        prop_assert_eq!(Policy::parse(&text).unwrap(), p);
    }

    #[test]
    fn span_program_reconstructs_iff_satisfied(p in policy(), attrs in attribute_set()) {
        let has = |a: &str| attrs.iter().any(|x| x == a);
        let msp = SpanProgram::from_policy(&p);
        let leaves = p.leaves();
        match reconstruction(&p, &|leaf| has(leaves[leaf])) {
            Some(coefficients) => {
                prop_assert!(p.is_satisfied_by(&has));
                prop_assert!(msp.reconstructs(&coefficients));
                prop_assert!(coefficients.iter().all(|(row, _)| has(leaves[*row])));
            }
            None => prop_assert!(!p.is_satisfied_by(&has)),
        }
    }
}

proptest! {
    // Each case runs a real encapsulation (up to 30 rows), key generations and
    // decapsulations: fewer cases, several attribute sets per policy.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn decryption_succeeds_iff_the_policy_is_satisfied(
        p in policy(),
        sets in prop::collection::vec(attribute_set(), 4),
        seed in any::<u64>(),
    ) {
        let (mpk, msk) = authority();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (ct, key) = mpk.encapsulate(&p, &mut rng);
        for attrs in sets {
            let user = msk.keygen(&attrs, &mut rng).unwrap();
            let satisfied = p.is_satisfied_by(&|a| attrs.iter().any(|x| x == a));
            match user.decapsulate(&ct) {
                Ok(k) => {
                    prop_assert!(satisfied, "decrypted without satisfying {}", p);
                    prop_assert_eq!(k, key.clone());
                }
                Err(Error::NotSatisfied { .. }) => prop_assert!(!satisfied, "refused although {} is satisfied by {:?}", p, attrs),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
}
