//! Audit-log inputs from untrusted sources: signed notes, checkpoints, verifier
//! keys and encrypted entries. Typed errors, never a panic; what parses
//! re-encodes to the same text or bytes.
#![no_main]

use asclepios_audit::note::{Checkpoint, NoteVerifier, SignedNote};
use asclepios_audit::SealedEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = SealedEvent::from_bytes(data) {
        assert_eq!(entry.to_bytes(), data);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(note) = SignedNote::parse(text) {
        if let Ok(cp) = Checkpoint::from_text(&note.text) {
            assert_eq!(cp.to_text(), note.text);
        }
    }
    if let Ok(key) = NoteVerifier::parse(text) {
        assert_eq!(key.to_string(), text.trim_end_matches(['\n', '\r']));
    }
});
