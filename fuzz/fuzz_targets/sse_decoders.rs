//! Searchable-encryption decoders on arbitrary bytes: token lists (what a
//! searcher receives), sealed state rows (what the store returns to the
//! authority) and index values (what the record service returns) give typed
//! errors, never a panic; a token list that decodes re-encodes the same.
#![no_main]

use asclepios_crypto::sse::{self, KeywordState, Mitra, SseKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tokens) = sse::decode_tokens(data) {
        assert_eq!(sse::encode_tokens(&tokens).as_slice(), data);
    }
    let mitra = Mitra::new(&SseKey::from_bytes([1; 32]));
    let row = mitra.state_row("type:Observation");
    let _ = mitra.open_state(&row, data);
    let _ = mitra.open_keywords(&row, data);
    // Values for three tokens, cut from the input.
    let state = KeywordState { first: 0, compacted: 0, next: 3 };
    let tokens = mitra.tokens("type:Observation", &state);
    let third = data.len() / 3;
    // An odd length also leaves one address empty, as a lossy server would.
    let middle = (data.len() % 2 == 0).then(|| data[third..2 * third].to_vec());
    let values = vec![
        Some(data[..third].to_vec()),
        middle,
        Some(data[2 * third..].to_vec()),
    ];
    let _ = sse::open_results(&tokens, &values);
});
