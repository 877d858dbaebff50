//! Intel SGX and TDX DCAP quotes, verified with `dcap-qvl` against Intel's
//! production root: the PCK certificate chain and CRLs, the QE identity, the
//! TCB info, the quote's ECDSA signature by the attestation key and the QE
//! report that certifies that key. Verification is offline: the collateral
//! comes with the evidence or from the verifier, and the time is an input,
//! so a verdict can be reproduced later for the same time.

use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::QuoteCollateralV3;

use crate::evidence::{Claims, Format};
use crate::Error;

/// The SGX enclave attribute bit that marks a debug enclave.
const SGX_ATTRIBUTE_DEBUG: u8 = 0x02;
/// The TD attribute bit that marks a debug trust domain.
const TD_ATTRIBUTE_DEBUG: u8 = 0x01;

/// Parses collateral in the JSON form a PCCS serves (and `dcap-qvl` writes).
pub fn parse_collateral(json: &str) -> Result<QuoteCollateralV3, Error> {
    serde_json::from_str(json).map_err(|e| Error::Verify(format!("collateral JSON: {e}")))
}

/// Verifies `quote` (which the envelope says is `format`) against
/// `collateral` at `now` (seconds since the epoch). Debug enclaves are
/// refused unless `allow_debug`.
pub fn verify(
    quote: &[u8],
    format: Format,
    collateral: &QuoteCollateralV3,
    now: u64,
    allow_debug: bool,
) -> Result<Claims, Error> {
    // The verifier parses untrusted bytes; it is a maintained crate, fuzzed
    // here too, and a panic in it must still not take a service down.
    let verified = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        QuoteVerifier::new_prod()
            .allow_debug(allow_debug)
            .verify(quote, collateral, now)
    }))
    .map_err(|_| Error::Verify("the quote verifier failed on malformed input".into()))?
    .map_err(|e| Error::Verify(format!("{e:#}")))?;

    let report = &verified.report;
    let mut claims = match (format, report.as_sgx(), report.as_td10()) {
        (Format::SgxDcap, Some(r), _) => Claims {
            format,
            measurement: r.mr_enclave.to_vec(),
            signer: Some(r.mr_signer.to_vec()),
            isv_svn: Some(r.isv_svn),
            tcb_status: None,
            advisory_ids: Vec::new(),
            debug: r.attributes[0] & SGX_ATTRIBUTE_DEBUG != 0,
            report_data: r.report_data,
            details: vec![
                ("isv_prod_id", r.isv_prod_id.to_string()),
                ("cpu_svn", hex::encode(r.cpu_svn)),
            ],
        },
        (Format::TdxDcap, _, Some(td)) => Claims {
            format,
            measurement: td.mr_td.to_vec(),
            signer: None,
            isv_svn: None,
            tcb_status: None,
            advisory_ids: Vec::new(),
            debug: td.td_attributes[0] & TD_ATTRIBUTE_DEBUG != 0,
            report_data: td.report_data,
            details: vec![
                ("rtmr0", hex::encode(td.rt_mr0)),
                ("rtmr1", hex::encode(td.rt_mr1)),
                ("rtmr2", hex::encode(td.rt_mr2)),
                ("rtmr3", hex::encode(td.rt_mr3)),
                ("mr_seam", hex::encode(td.mr_seam)),
                ("mr_config_id", hex::encode(td.mr_config_id)),
                ("mr_owner", hex::encode(td.mr_owner)),
            ],
        },
        _ => {
            let found = if report.is_sgx() {
                "an SGX enclave report"
            } else {
                "a TDX trust domain report"
            };
            return Err(Error::Verify(format!(
                "the envelope says {} but the quote carries {found}",
                format.name()
            )));
        }
    };
    claims.tcb_status = Some(verified.status);
    claims.advisory_ids = verified.advisory_ids;
    Ok(claims)
}
