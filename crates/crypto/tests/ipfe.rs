//! Inner-product FE on random vectors and weights, negative values included;
//! results beyond the bound are errors, never wrong numbers.

use asclepios_crypto::ipfe::{DlogTable, FeError, Ipfe, Label, Mcfe, SlotKey};
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;

fn table() -> std::sync::Arc<DlogTable> {
    DlogTable::shared(1 << 12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn single_input_matches_the_plain_inner_product(
        x in prop::collection::vec(-100_000i64..100_000, 1..12),
        seed in any::<u64>(),
    ) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let (ipfe, msk) = Ipfe::setup(x.len(), &mut rng);
        let y: Vec<i64> = (0..x.len() as i64).map(|i| (seed as i64 >> i) % 7 - 3).collect();
        let ct = ipfe.encrypt(&x, &mut rng).unwrap();
        let key = ipfe.keygen(&msk, &y).unwrap();
        let expected: i64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        let bound = 1u64 << 22;
        prop_assert_eq!(ipfe.decrypt(&key, &ct, &table(), bound), Ok(expected));
        // A bound below the result is an error, not a wrong number.
        if expected.unsigned_abs() > 1 {
            let small = expected.unsigned_abs() - 1;
            prop_assert_eq!(
                ipfe.decrypt(&key, &ct, &table(), small),
                Err(FeError::OutOfRange { bound: small })
            );
        }
    }

    #[test]
    fn multi_client_matches_the_plain_weighted_sum(
        xs in prop::collection::vec(-50_000i64..50_000, 1..16),
        ws in prop::collection::vec(-2i64..=2, 16),
        seed in any::<u64>(),
    ) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let keys: Vec<SlotKey> = xs.iter().map(|_| SlotKey::generate(&mut rng)).collect();
        let label = Label::new(&format!("study/{seed}"));
        let cts: Vec<_> = keys.iter().zip(&xs).map(|(k, &x)| k.encrypt(&label, x).unwrap()).collect();
        let y = &ws[..xs.len()];
        let refs: Vec<&SlotKey> = keys.iter().collect();
        let key = Mcfe::keygen(&refs, y, &label).unwrap();
        let expected: i64 = xs.iter().zip(y).map(|(a, b)| a * b).sum();
        prop_assert_eq!(Mcfe::decrypt(&key, y, &label, &cts, &table(), 1 << 22), Ok(expected));
    }
}

#[test]
fn values_beyond_32_bits_are_refused() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let (ipfe, _) = Ipfe::setup(2, &mut rng);
    assert_eq!(
        ipfe.encrypt(&[1, 1 << 32], &mut rng),
        Err(FeError::TooLarge(1 << 32))
    );
    assert!(ipfe.encrypt(&[1, (1 << 32) - 1], &mut rng).is_ok());
}
