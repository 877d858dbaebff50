//! `asclepios log ...`: verifiers for monitors and auditors. They check proofs
//! and checkpoints of any RFC 9162 log (sizes up to 2^64 - 1), not only of
//! asclepios logs.
//!
//! Exit status: 0 when the claim holds, 1 when it does not, 2 when the input is
//! malformed. One line on stdout says which.

use std::process::ExitCode;

use asclepios_audit::merkle::{self, Hash};
use asclepios_audit::note::{NoteError, NoteVerifier};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Subcommand;

// The subcommand names (`verify-*`) are the interface monitors script against.
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Check that a leaf is in a tree: RFC 9162 inclusion proof.
    ///
    /// Example: asclepios log verify-inclusion --size 8 --index 0 --leaf-hash <H> --root <R> --proof <P1>,<P2>,<P3>
    VerifyInclusion {
        /// Tree size.
        #[arg(long, allow_hyphen_values = true)]
        size: String,
        /// Zero-based leaf index.
        #[arg(long, allow_hyphen_values = true)]
        index: String,
        /// Leaf hash, SHA-256(0x00 || entry): 64 hex digits or 44 characters of standard base64.
        #[arg(long)]
        leaf_hash: String,
        /// Root hash of the tree of --size leaves (hex or base64).
        #[arg(long)]
        root: String,
        /// Proof hashes, comma-separated, leaf side first (empty for a one-leaf tree).
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        proof: String,
    },
    /// Check that one tree is a prefix of another: RFC 9162 consistency proof.
    ///
    /// Example: asclepios log verify-consistency --old-size 5 --old-root <R1> --new-size 8 --new-root <R2> --proof <P1>,<P2>
    VerifyConsistency {
        /// Size of the older tree.
        #[arg(long, allow_hyphen_values = true)]
        old_size: String,
        /// Root of the older tree (hex or base64).
        #[arg(long)]
        old_root: String,
        /// Size of the newer tree.
        #[arg(long, allow_hyphen_values = true)]
        new_size: String,
        /// Root of the newer tree (hex or base64).
        #[arg(long)]
        new_root: String,
        /// Proof hashes, comma-separated (empty when a size is 0 or both are equal).
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        proof: String,
    },
    /// Check a C2SP checkpoint (signed note) against a verifier key
    /// (`name+keyid+base64key`, as written by Go's sumdb/note).
    VerifyCheckpoint {
        /// File holding the signed checkpoint.
        #[arg(long)]
        checkpoint: std::path::PathBuf,
        /// File holding the verifier key.
        #[arg(long)]
        key: std::path::PathBuf,
        /// File holding a witness's cosigner key (C2SP `cosignature/v1`,
        /// `name+keyid+base64key` with type 0x04); repeat for several.
        #[arg(long = "witness")]
        witnesses: Vec<std::path::PathBuf>,
        /// How many of the witnesses must have cosigned (default: all given).
        #[arg(long)]
        quorum: Option<usize>,
    },
}

enum Verdict {
    Holds(String),
    Fails(String),
    Malformed(String),
}

pub fn run(command: LogCommand) -> ExitCode {
    let verdict = match command {
        LogCommand::VerifyInclusion {
            size,
            index,
            leaf_hash,
            root,
            proof,
        } => inclusion(&size, &index, &leaf_hash, &root, &proof),
        LogCommand::VerifyConsistency {
            old_size,
            old_root,
            new_size,
            new_root,
            proof,
        } => consistency(&old_size, &old_root, &new_size, &new_root, &proof),
        LogCommand::VerifyCheckpoint {
            checkpoint,
            key,
            witnesses,
            quorum,
        } => verify_checkpoint(&checkpoint, &key, &witnesses, quorum),
    };
    let verdict = verdict.unwrap_or_else(|v| v);
    match verdict {
        Verdict::Holds(s) => {
            println!("OK: {s}");
            ExitCode::from(0)
        }
        Verdict::Fails(s) => {
            println!("FAIL: {s}");
            ExitCode::from(1)
        }
        Verdict::Malformed(s) => {
            println!("MALFORMED: {s}");
            ExitCode::from(2)
        }
    }
}

fn number(what: &str, text: &str) -> Result<u64, Verdict> {
    text.trim().parse().map_err(|_| {
        Verdict::Malformed(format!("{what} `{text}` is not a number from 0 to 2^64-1"))
    })
}

/// 64 hex digits, or standard base64 (44 characters padded, 43 unpadded).
fn hash(what: &str, text: &str) -> Result<Hash, Verdict> {
    let text = text.trim();
    let bytes = match text.len() {
        64 => hex::decode(text).ok(),
        44 => B64.decode(text).ok(),
        43 => base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text)
            .ok(),
        _ => None,
    };
    bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| {
        Verdict::Malformed(format!(
            "{what} is not a SHA-256 hash in hex (64 digits) or base64 (44 characters)"
        ))
    })
}

fn proof(text: &str) -> Result<Vec<Hash>, Verdict> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .enumerate()
        .map(|(i, h)| hash(&format!("proof hash {}", i + 1), h))
        .collect()
}

fn inclusion(size: &str, index: &str, leaf: &str, root: &str, p: &str) -> Result<Verdict, Verdict> {
    let (size, index) = (number("--size", size)?, number("--index", index)?);
    let (leaf, root, p) = (hash("--leaf-hash", leaf)?, hash("--root", root)?, proof(p)?);
    Ok(
        match merkle::verify_inclusion(index, size, &leaf, &p, &root) {
            Ok(()) => Verdict::Holds(format!(
                "leaf {index} is included in the tree of size {size}"
            )),
            Err(e) => Verdict::Fails(format!(
                "inclusion of leaf {index} in the tree of size {size} does not hold: {e}"
            )),
        },
    )
}

fn consistency(
    old_size: &str,
    old_root: &str,
    new_size: &str,
    new_root: &str,
    p: &str,
) -> Result<Verdict, Verdict> {
    let (old, new) = (
        number("--old-size", old_size)?,
        number("--new-size", new_size)?,
    );
    let (r1, r2, p) = (
        hash("--old-root", old_root)?,
        hash("--new-root", new_root)?,
        proof(p)?,
    );
    Ok(match merkle::verify_consistency(old, new, &r1, &r2, &p) {
        Ok(()) => Verdict::Holds(format!(
            "the tree of size {old} is a prefix of the tree of size {new}"
        )),
        Err(e) => Verdict::Fails(format!(
            "consistency from size {old} to {new} does not hold: {e}"
        )),
    })
}

fn read_text(what: &str, path: &std::path::Path) -> Result<String, Verdict> {
    let bytes = std::fs::read(path)
        .map_err(|e| Verdict::Malformed(format!("cannot read {what} {}: {e}", path.display())))?;
    String::from_utf8(bytes)
        .map_err(|_| Verdict::Malformed(format!("{what} {} is not UTF-8 text", path.display())))
}

fn verify_checkpoint(
    checkpoint: &std::path::Path,
    key: &std::path::Path,
    witnesses: &[std::path::PathBuf],
    quorum: Option<usize>,
) -> Result<Verdict, Verdict> {
    let note = read_text("checkpoint", checkpoint)?;
    let key_text = read_text("key file", key)?;
    let verifier =
        NoteVerifier::parse(key_text.trim()).map_err(|e| Verdict::Malformed(e.to_string()))?;
    let policy = asclepios_audit::WitnessPolicy {
        witnesses: witnesses
            .iter()
            .map(|w| {
                asclepios_audit::CosignatureVerifier::parse(read_text("witness key", w)?.trim())
                    .map_err(|e| Verdict::Malformed(format!("{}: {e}", w.display())))
            })
            .collect::<Result<_, _>>()?,
        quorum: quorum.unwrap_or(witnesses.len()),
    };
    Ok(match policy.verify(&note, &verifier) {
        Ok((cp, cosigned)) => Verdict::Holds(format!(
            "checkpoint of `{}` at size {} is signed by {}+{}{}",
            cp.origin,
            cp.size,
            verifier.name(),
            hex::encode(verifier.key_id()),
            if cosigned.is_empty() {
                String::new()
            } else {
                format!(" and cosigned by {}", cosigned.join(", "))
            }
        )),
        Err(NoteError::NotSigned(name)) => Verdict::Fails(format!(
            "the checkpoint carries no valid signature by `{name}`"
        )),
        Err(e @ NoteError::NotCosigned { .. }) => Verdict::Fails(e.to_string()),
        Err(e) => Verdict::Malformed(e.to_string()),
    })
}
