//! Interoperability with independent implementations, from crates.io:
//! Cloudflare's `signed_note` (a port of Go's `golang.org/x/mod/sumdb/note`)
//! reads and verifies our signed checkpoints and finds our cosignature
//! lines under the key ids it computes itself; `tlog_tiles` (a port of Go's
//! `golang.org/x/mod/sumdb/tlog`) parses our checkpoint bodies and checks
//! our RFC 9162 inclusion and consistency proofs. The `cosignature/v1`
//! message is checked by a transcription of the C2SP spec in this file,
//! with `ed25519-dalek` directly, not through our cosignature module.

use asclepios_audit::merkle::{leaf_hash, node_hash, MemoryTree};
use asclepios_audit::{Checkpoint, Cosigner, NoteSigner};
use signed_note::{Note, StandardVerifier, Verifier, VerifierList};
use tlog_tiles::{check_record, check_tree, record_hash, Hash as TlogHash};

const ORIGIN: &str = "audit.example/interop";

fn tree(size: u64) -> MemoryTree {
    let mut tree = MemoryTree::new();
    for i in 0..size {
        tree.push(format!("entry {i}").as_bytes());
    }
    tree
}

fn signed_checkpoint(tree: &MemoryTree) -> (NoteSigner, String) {
    let signer = NoteSigner::from_seed(ORIGIN, &[9; 32]).unwrap();
    let checkpoint = Checkpoint {
        origin: ORIGIN.into(),
        size: tree.size(),
        root: tree.root(),
        extensions: Vec::new(),
    };
    let note = checkpoint.sign(&signer).unwrap();
    (signer, note)
}

#[test]
fn our_checkpoints_verify_with_signed_note_and_parse_with_tlog_tiles() {
    let tree = tree(1000);
    let (signer, note) = signed_checkpoint(&tree);
    let theirs = StandardVerifier::new(&signer.verifier().to_string()).unwrap();
    let parsed = Note::from_bytes(note.as_bytes()).unwrap();
    let (verified, unverified) = parsed
        .verify(&VerifierList::new(vec![Box::new(theirs)]))
        .unwrap();
    assert_eq!((verified.len(), unverified.len()), (1, 0));
    let body = tlog_tiles::Checkpoint::from_bytes(parsed.text()).unwrap();
    assert_eq!(body.origin(), ORIGIN);
    assert_eq!(body.size(), 1000);
    assert_eq!(body.hash().0, tree.root());
    // A checkpoint they sign and encode, we verify.
    let (skey, vkey) = signed_note::generate_key(&mut rand_core::OsRng, ORIGIN);
    let theirs = signed_note::StandardSigner::new(&skey).unwrap();
    let mut foreign = Note::new(&body.to_bytes(), &[]).unwrap();
    foreign.add_sigs(&[&theirs]).unwrap();
    let foreign = String::from_utf8(foreign.to_bytes()).unwrap();
    let ours = asclepios_audit::NoteVerifier::parse(&vkey).unwrap();
    let checked = Checkpoint::verify(&foreign, &ours).unwrap();
    assert_eq!((checked.size, checked.root), (1000, tree.root()));
    // A note with a flipped signature bit is refused by both.
    let mut bad = note.clone().into_bytes();
    let at = bad.len() - 3;
    bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    assert!(Checkpoint::verify(&bad, &signer.verifier()).is_err());
    let theirs = StandardVerifier::new(&signer.verifier().to_string()).unwrap();
    assert!(Note::from_bytes(bad.as_bytes())
        .unwrap()
        .verify(&VerifierList::new(vec![Box::new(theirs)]))
        .is_err());
}

#[test]
fn our_proofs_check_with_tlog_tiles() {
    assert_eq!(record_hash(b"entry 7").0, leaf_hash(b"entry 7"));
    assert_eq!(
        tlog_tiles::node_hash(TlogHash([1; 32]), TlogHash([2; 32])).0,
        node_hash(&[1; 32], &[2; 32])
    );
    let hashes = |proof: Vec<[u8; 32]>| proof.into_iter().map(TlogHash).collect::<Vec<_>>();
    let big = tree(300);
    for size in (1..=70).chain([127, 128, 129, 255, 256, 257, 300]) {
        let root = TlogHash(big.root_at(size));
        for index in (0..size).step_by(usize::try_from(size / 9 + 1).unwrap()) {
            let proof = hashes(big.prove_inclusion(index, size));
            let leaf = TlogHash(leaf_hash(format!("entry {index}").as_bytes()));
            check_record(&proof, size, root, index, leaf)
                .unwrap_or_else(|e| panic!("inclusion of {index} in {size}: {e:?}"));
            // The same proof for another leaf fails there too.
            let other = TlogHash(leaf_hash(b"not in the log"));
            assert!(check_record(&proof, size, root, index, other).is_err());
        }
        for old in (1..=size).step_by(usize::try_from(size / 7 + 1).unwrap()) {
            let proof = hashes(big.prove_consistency(old, size));
            check_tree(&proof, size, root, old, TlogHash(big.root_at(old)))
                .unwrap_or_else(|e| panic!("consistency {old} -> {size}: {e:?}"));
        }
    }
}

/// `cosignature/v1` as C2SP tlog-cosignature states it: the key id is
/// `SHA-256(name ‖ "\n" ‖ 0x04 ‖ key)[:4]` (computed by `signed_note`),
/// the signature line carries an 8-byte big-endian timestamp and then an
/// Ed25519 signature over `cosignature/v1\ntime <t>\n<checkpoint text>`.
struct SpecCosignatureVerifier {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl Verifier for SpecCosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let (Some(time), Some(signature)) = (sig.get(..8), sig.get(8..)) else {
            return false;
        };
        let time = u64::from_be_bytes(time.try_into().unwrap());
        let mut message = format!("cosignature/v1\ntime {time}\n").into_bytes();
        message.extend_from_slice(msg);
        ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|s| self.key.verify_strict(&message, &s).is_ok())
    }
}

#[test]
fn our_cosignatures_verify_under_the_spec_and_key_ids_of_signed_note() {
    let tree = tree(42);
    let (signer, note) = signed_checkpoint(&tree);
    let witness = Cosigner::from_seed("witness.example/w", &[3; 32]).unwrap();
    let text = &note[..note.find("\n\n").unwrap() + 1];
    let cosigned = format!("{note}{}", witness.cosign(text, 1_700_000_000).unwrap());
    // The public key, read back from the vkey (`name+id+base64(0x04 ‖ key)`).
    let vkey = witness.verifier().to_string();
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        vkey.rsplit('+').next().unwrap(),
    )
    .unwrap();
    assert_eq!(raw[0], 0x04);
    let spec = SpecCosignatureVerifier {
        name: "witness.example/w".into(),
        id: signed_note::key_id("witness.example/w", &raw),
        key: ed25519_dalek::VerifyingKey::from_bytes(&raw[1..].try_into().unwrap()).unwrap(),
    };
    let log = StandardVerifier::new(&signer.verifier().to_string()).unwrap();
    let parsed = Note::from_bytes(cosigned.as_bytes()).unwrap();
    let (verified, unverified) = parsed
        .verify(&VerifierList::new(vec![Box::new(log), Box::new(spec)]))
        .unwrap();
    assert_eq!((verified.len(), unverified.len()), (2, 0));
    // A cosignature moved to another checkpoint is refused.
    let other = tree_note_with(&signer, 43);
    let moved = format!(
        "{other}{}",
        cosigned.lines().last().map(|l| format!("{l}\n")).unwrap()
    );
    let spec = SpecCosignatureVerifier {
        name: "witness.example/w".into(),
        id: signed_note::key_id("witness.example/w", &raw),
        key: ed25519_dalek::VerifyingKey::from_bytes(&raw[1..].try_into().unwrap()).unwrap(),
    };
    assert!(Note::from_bytes(moved.as_bytes())
        .unwrap()
        .verify(&VerifierList::new(vec![Box::new(spec)]))
        .is_err());
}

fn tree_note_with(signer: &NoteSigner, size: u64) -> String {
    let tree = tree(size);
    Checkpoint {
        origin: ORIGIN.into(),
        size,
        root: tree.root(),
        extensions: Vec::new(),
    }
    .sign(signer)
    .unwrap()
}
