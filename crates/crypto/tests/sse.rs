//! Mitra against a plaintext index, on random histories of adds, deletes,
//! re-adds, searches and compactions; and forward privacy: tokens of a search
//! never reach what is written after it.

use std::collections::{BTreeSet, HashMap};

use asclepios_crypto::sse::{open_results, KeywordState, MemoryIndex, Mitra, Op, SseKey};
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;

fn rng() -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::from_entropy()
}

#[derive(Clone, Debug)]
enum Step {
    Update(Vec<(Op, u8, u8)>),
    Search(u8),
    SearchAndCompact(u8),
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![Just(Op::Add), Just(Op::Delete)];
    prop_oneof![
        4 => prop::collection::vec((op, 0u8..4, 0u8..12), 1..12).prop_map(Step::Update),
        1 => (0u8..4).prop_map(Step::Search),
        1 => (0u8..4).prop_map(Step::SearchAndCompact),
    ]
}

fn keyword(k: u8) -> String {
    format!("code:http://loinc.org|{k}")
}

fn id(i: u8) -> Vec<u8> {
    format!("pat-{}/obs-{i}", i % 3).into_bytes()
}

/// The client's keyword states and the server's index.
struct World {
    mitra: Mitra,
    states: HashMap<String, KeywordState>,
    index: MemoryIndex,
}

impl World {
    fn new(seed: u8) -> Self {
        World {
            mitra: Mitra::new(&SseKey::from_bytes([seed; 32])),
            states: HashMap::new(),
            index: MemoryIndex::default(),
        }
    }

    fn update(&mut self, w: &str, ops: &[(Op, Vec<u8>)]) {
        let st = self.states.entry(w.to_string()).or_default();
        let ops: Vec<(Op, &[u8])> = ops.iter().map(|(op, id)| (*op, id.as_slice())).collect();
        let entries = self.mitra.update(w, st, &ops, &mut rng()).unwrap();
        self.index.put(entries).unwrap();
    }

    fn search(&mut self, w: &str, compact: bool) -> Vec<Vec<u8>> {
        let st = self.states.entry(w.to_string()).or_default();
        let tokens = self.mitra.tokens(w, st);
        let values = self.index.get(tokens.iter().map(|t| t.addr));
        let result = open_results(&tokens, &values).unwrap();
        if compact {
            let c = self.mitra.compact(w, st, &result.ids, &mut rng()).unwrap();
            self.index.delete(&c.delete);
            self.index.put(c.put).unwrap();
        }
        result.ids
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn matches_a_plaintext_index(steps in prop::collection::vec(step(), 1..40)) {
        let mut world = World::new(3);
        let mut plain: HashMap<String, BTreeSet<Vec<u8>>> = HashMap::new();
        for s in steps {
            match s {
                Step::Update(ops) => {
                    // One batch may touch several keywords, as a record does.
                    let mut by_kw: HashMap<String, Vec<(Op, Vec<u8>)>> = HashMap::new();
                    for (op, k, i) in ops {
                        by_kw.entry(keyword(k)).or_default().push((op, id(i)));
                        let set = plain.entry(keyword(k)).or_default();
                        match op {
                            Op::Add => set.insert(id(i)),
                            Op::Delete => set.remove(&id(i)),
                        };
                    }
                    for (w, ops) in by_kw {
                        world.update(&w, &ops);
                    }
                }
                Step::Search(k) | Step::SearchAndCompact(k) => {
                    let compact = matches!(s, Step::SearchAndCompact(_));
                    let found = world.search(&keyword(k), compact);
                    let unique: BTreeSet<_> = found.iter().cloned().collect();
                    prop_assert_eq!(unique.len(), found.len(), "an id came back twice");
                    prop_assert_eq!(&unique, &plain.get(&keyword(k)).cloned().unwrap_or_default());
                    if compact {
                        // After compaction the list holds only chunks of live ids.
                        let st = world.states[&keyword(k)];
                        prop_assert_eq!(st.singles(), 0);
                        prop_assert!(st.entries() <= 1, "{} ids in {} chunks", found.len(), st.entries());
                    }
                }
            }
        }
        // Every keyword agrees at the end, and compaction left no dead entries.
        for k in 0..4u8 {
            let found: BTreeSet<_> = world.search(&keyword(k), true).into_iter().collect();
            prop_assert_eq!(found, plain.get(&keyword(k)).cloned().unwrap_or_default());
        }
        let live_chunks: u64 = world.states.values().map(|s| s.entries()).sum();
        prop_assert_eq!(world.index.len() as u64, live_chunks);
    }
}

#[test]
fn old_tokens_find_nothing_new() {
    let mut world = World::new(9);
    let w = "type:Observation";
    world.update(w, &[(Op::Add, id(1)), (Op::Add, id(2))]);
    let st = world.states[w];
    let old_tokens = world.mitra.tokens(w, &st);
    let before = world.search(w, false);
    assert_eq!(before.len(), 2);

    // Updates after the search: adds, a delete of a found id, a re-add.
    let before_addrs: BTreeSet<_> = world.index.entries().map(|(a, _)| *a).collect();
    world.update(
        w,
        &[(Op::Add, id(3)), (Op::Delete, id(1)), (Op::Add, id(4))],
    );
    let new_addrs: Vec<_> = world
        .index
        .entries()
        .map(|(a, _)| *a)
        .filter(|a| !before_addrs.contains(a))
        .collect();
    assert_eq!(new_addrs.len(), 3);
    for t in &old_tokens {
        assert!(
            !new_addrs.contains(&t.addr),
            "an old token names a new entry"
        );
    }
    // Replaying the old tokens against the grown index gives the old answer.
    let values = world.index.get(old_tokens.iter().map(|t| t.addr));
    assert_eq!(open_results(&old_tokens, &values).unwrap().ids, before);

    // After a compaction too: the old tokens reach nothing at all.
    let now = world.search(w, true);
    assert_eq!(now, vec![id(2), id(3), id(4)]);
    let values = world.index.get(old_tokens.iter().map(|t| t.addr));
    assert!(values.iter().all(Option::is_none));

    // And a fresh search sees the new state.
    assert_eq!(world.search(w, false), vec![id(2), id(3), id(4)]);
}

#[test]
fn entries_do_not_carry_keywords_or_ids() {
    let mut world = World::new(5);
    let w = "code:http://snomed.info/sct|44054006";
    world.update(w, &[(Op::Add, b"pat-00007/cond-secret".to_vec())]);
    world.search(w, true);
    world.update(w, &[(Op::Add, b"pat-00008/cond-other".to_vec())]);
    for (addr, value) in world.index.entries() {
        for needle in [&b"44054006"[..], b"pat-0000", b"cond-", b"snomed"] {
            assert!(!addr.windows(needle.len()).any(|x| x == needle));
            assert!(!value.windows(needle.len()).any(|x| x == needle));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// What a searcher, the authority or a client receives from elsewhere
    /// gives typed errors on arbitrary bytes, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
        let mitra = Mitra::new(&SseKey::from_bytes([2; 32]));
        let _ = asclepios_crypto::sse::decode_tokens(&data);
        let row = mitra.state_row("w");
        prop_assert!(mitra.open_state(&row, &data).is_err());
        prop_assert!(mitra.open_keywords(&row, &data).is_err());
        let st = KeywordState { first: 0, compacted: 0, next: 2 };
        let tokens = mitra.tokens("w", &st);
        let cut = cut.min(data.len());
        let values = [Some(data[..cut].to_vec()), Some(data[cut..].to_vec())];
        prop_assert!(open_results(&tokens, &values).is_err());
    }
}
