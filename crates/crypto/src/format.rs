//! Binary formats: every serialized object starts with a header
//! `"ASCL" | kind (1 byte) | version (1 byte)`, followed by big-endian,
//! length-prefixed fields. Decoders check every length against the bytes that
//! remain and against a per-field maximum, reject non-canonical or off-curve
//! group elements, and refuse trailing bytes; they return [`DecodeError`] and never
//! panic.

use blstrs::{Compress, Fp12, G1Affine, G2Affine, Gt, Scalar};
use group::prime::PrimeCurveAffine;

/// The four bytes every asclepios object starts with.
pub const MAGIC: [u8; 4] = *b"ASCL";

/// What an encoded object is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Kind {
    /// FAME master public key.
    AbePublicKey = 0x01,
    /// FAME master secret key.
    AbeMasterSecretKey = 0x02,
    /// FAME user (decryption) key.
    AbeUserKey = 0x03,
    /// FAME ciphertext (key encapsulation).
    AbeCiphertext = 0x04,
    /// AEAD-sealed record body.
    SealedBody = 0x05,
    /// ABE wrapper of a record's data key.
    KeyWrapper = 0x06,
    /// Sealed body and key wrapper together.
    Envelope = 0x07,
    /// A confidential audit-log entry.
    AuditEntry = 0x08,
    /// A searchable-encryption keyword state, sealed by the authority.
    SseState = 0x09,
    /// The keywords a record is indexed under, sealed by the authority.
    SseKeywords = 0x0a,
    /// Search tokens: addresses and the keys of their values.
    SseTokens = 0x0b,
    /// Remote attestation evidence (a DCAP quote or the insecure software format).
    AttestationEvidence = 0x0c,
    /// An audit-log leaf about a subject, linked to the previous leaf about
    /// the same subject.
    LinkedLeaf = 0x0d,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Kind::AbePublicKey,
            0x02 => Kind::AbeMasterSecretKey,
            0x03 => Kind::AbeUserKey,
            0x04 => Kind::AbeCiphertext,
            0x05 => Kind::SealedBody,
            0x06 => Kind::KeyWrapper,
            0x07 => Kind::Envelope,
            0x08 => Kind::AuditEntry,
            0x09 => Kind::SseState,
            0x0a => Kind::SseKeywords,
            0x0b => Kind::SseTokens,
            0x0c => Kind::AttestationEvidence,
            0x0d => Kind::LinkedLeaf,
            _ => return None,
        })
    }

    /// A human-readable name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::AbePublicKey => "ABE public key",
            Kind::AbeMasterSecretKey => "ABE master secret key",
            Kind::AbeUserKey => "ABE user key",
            Kind::AbeCiphertext => "ABE ciphertext",
            Kind::SealedBody => "sealed body",
            Kind::KeyWrapper => "key wrapper",
            Kind::Envelope => "sealed envelope",
            Kind::AuditEntry => "audit entry",
            Kind::SseState => "sealed keyword state",
            Kind::SseKeywords => "sealed record keywords",
            Kind::SseTokens => "search tokens",
            Kind::AttestationEvidence => "attestation evidence",
            Kind::LinkedLeaf => "linked audit leaf",
        }
    }
}

/// The only version of each format this build reads and writes.
pub const VERSION: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the format needs.
    #[error("truncated input: {what} needs {needed} more bytes, {left} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// The input does not start with the asclepios magic.
    #[error("not an asclepios object (bad magic bytes)")]
    BadMagic,
    /// A valid header for another kind of object.
    #[error("expected a {expected}, found a {found}")]
    WrongKind {
        /// What the caller asked to decode.
        expected: &'static str,
        /// What the header says.
        found: String,
    },
    /// A format version this build does not know.
    #[error(
        "{kind} format version {version} is not supported (this build reads version {VERSION})"
    )]
    UnsupportedVersion {
        /// The object kind.
        kind: &'static str,
        /// The version found.
        version: u8,
    },
    /// A group element that is not canonical, not on the curve, not in the
    /// prime-order subgroup, or the identity.
    #[error("invalid group element in {0}")]
    InvalidPoint(&'static str),
    /// A scalar that is not canonical (not below the group order) or is zero
    /// where zero is not allowed.
    #[error("invalid scalar in {0}")]
    InvalidScalar(&'static str),
    /// A length field above its limit.
    #[error("{what} of length {len} exceeds the limit of {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its claimed length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text field that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A field whose value breaks a rule of the format.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// The rule broken.
        why: String,
    },
    /// Bytes after the end of the object.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
}

/// Serializes fields after a header.
#[derive(Debug)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// Starts an object of `kind`: writes the header.
    pub fn new(kind: Kind) -> Self {
        let mut v = Vec::with_capacity(256);
        v.extend_from_slice(&MAGIC);
        v.push(kind as u8);
        v.push(VERSION);
        Writer(v)
    }

    /// Starts an object of `kind` with room for `body` more bytes.
    pub fn with_capacity(kind: Kind, body: usize) -> Self {
        let mut w = Writer(Vec::with_capacity(6 + body));
        w.0.extend_from_slice(&MAGIC);
        w.0.push(kind as u8);
        w.0.push(VERSION);
        w
    }

    /// A big-endian u16.
    pub fn u16(&mut self, x: u16) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }

    /// A big-endian u32.
    pub fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }

    /// A big-endian u64.
    pub fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_be_bytes());
    }

    /// Bytes without a length prefix.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// Bytes with a u16 length prefix; callers keep them under the decoder's limit.
    ///
    /// # Panics
    ///
    /// If `bytes` is longer than `u16::MAX`: every field has a smaller limit,
    /// checked where the value is made.
    pub fn bytes16(&mut self, bytes: &[u8]) {
        let len = u16::try_from(bytes.len()).expect("field bounded by its limit");
        self.u16(len);
        self.raw(bytes);
    }

    /// Bytes with a u32 length prefix.
    ///
    /// # Panics
    ///
    /// If `bytes` is longer than `u32::MAX` (no field may be).
    pub fn bytes32(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).expect("field bounded by its limit");
        self.u32(len);
        self.raw(bytes);
    }

    pub(crate) fn g1(&mut self, p: &G1Affine) {
        self.raw(&p.to_compressed());
    }

    pub(crate) fn g2(&mut self, p: &G2Affine) {
        self.raw(&p.to_compressed());
    }

    pub(crate) fn scalar(&mut self, s: &Scalar) {
        self.raw(&s.to_bytes_le());
    }

    /// A target-group element in torus-compressed form (288 bytes). The
    /// identity has no such form; callers never store it.
    pub(crate) fn gt(&mut self, g: &Gt) {
        assert!(
            !bool::from(group::Group::is_identity(g)),
            "the identity is never serialized"
        );
        g.write_compressed(&mut self.0)
            .expect("writing to a Vec cannot fail");
    }

    /// Ends the object.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Canonical 576-byte big-endian encoding of a target-group element (blst's
/// `fp12` serialization): the KDF input of the ABE KEM.
pub(crate) fn gt_to_bytes(g: &Gt) -> [u8; 576] {
    blst::blst_fp12::from(Fp12::from(*g)).to_bendian()
}

/// Size of a compressed target-group element.
pub(crate) const GT_COMPRESSED_BYTES: usize = 288;

/// Reads fields after checking a header.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading an object of `kind`, checking magic, kind and version.
    pub fn new(buf: &'a [u8], kind: Kind) -> Result<Self, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let magic = r.take(4, "header")?;
        if magic != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let k = r.u8("header")?;
        if k != kind as u8 {
            return Err(DecodeError::WrongKind {
                expected: kind.name(),
                found: Kind::from_byte(k)
                    .map_or(format!("unknown kind 0x{k:02x}"), |k| k.name().to_string()),
            });
        }
        let version = r.u8("header")?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                kind: kind.name(),
                version,
            });
        }
        Ok(r)
    }

    /// Reads fields of bytes that carry no header (an already authenticated
    /// plaintext).
    pub fn new_raw(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Every byte not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(DecodeError::Truncated {
                what,
                needed: n,
                left,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    /// A big-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// A big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// A big-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A fixed-size array.
    pub fn fixed<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.array(what)
    }

    /// A count checked against `max` and against the bytes left, assuming each
    /// item takes at least `min_item_bytes`: a hostile count cannot make us
    /// allocate more than the input justifies.
    pub fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_item_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(DecodeError::TooLong { what, len: n, max });
        }
        let left = self.buf.len() - self.pos;
        if n.saturating_mul(min_item_bytes) > left {
            return Err(DecodeError::Truncated {
                what,
                needed: n.saturating_mul(min_item_bytes),
                left,
            });
        }
        Ok(n)
    }

    /// Bytes with a u16 length prefix.
    pub fn bytes16(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.u16(what)? as usize;
        if n > max {
            return Err(DecodeError::TooLong { what, len: n, max });
        }
        self.take(n, what)
    }

    /// Bytes with a u32 length prefix.
    ///
    /// # Panics
    ///
    /// If `bytes` is longer than `u32::MAX` (no field may be).
    pub fn bytes32(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(DecodeError::TooLong { what, len: n, max });
        }
        self.take(n, what)
    }

    /// A UTF-8 string with a u16 length prefix.
    pub fn str16(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes16(what, max)?).map_err(|_| DecodeError::InvalidUtf8(what))
    }

    /// A G1 point; the identity is refused (it never appears in honest objects
    /// and would make a pairing degenerate).
    pub(crate) fn g1(&mut self, what: &'static str) -> Result<G1Affine, DecodeError> {
        let p = Option::<G1Affine>::from(G1Affine::from_compressed(&self.array(what)?))
            .ok_or(DecodeError::InvalidPoint(what))?;
        if bool::from(p.is_identity()) {
            return Err(DecodeError::InvalidPoint(what));
        }
        Ok(p)
    }

    /// A G2 point; the identity is refused.
    pub(crate) fn g2(&mut self, what: &'static str) -> Result<G2Affine, DecodeError> {
        let p = Option::<G2Affine>::from(G2Affine::from_compressed(&self.array(what)?))
            .ok_or(DecodeError::InvalidPoint(what))?;
        if bool::from(p.is_identity()) {
            return Err(DecodeError::InvalidPoint(what));
        }
        Ok(p)
    }

    /// A non-zero canonical scalar.
    pub(crate) fn scalar(&mut self, what: &'static str) -> Result<Scalar, DecodeError> {
        let s = Option::<Scalar>::from(Scalar::from_bytes_le(&self.array(what)?))
            .ok_or(DecodeError::InvalidScalar(what))?;
        if bool::from(ff::Field::is_zero(&s)) {
            return Err(DecodeError::InvalidScalar(what));
        }
        Ok(s)
    }

    /// A torus-compressed target-group element, checked (by blstrs) to be
    /// canonical and in the prime-order subgroup; decompression never yields
    /// the identity.
    pub(crate) fn gt(&mut self, what: &'static str) -> Result<Gt, DecodeError> {
        let bytes = self.take(GT_COMPRESSED_BYTES, what)?;
        Gt::read_compressed(bytes).map_err(|_| DecodeError::InvalidPoint(what))
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}
