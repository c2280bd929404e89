//! Payloads as the SQLite store keeps them: packed into an LZ4 block (the body's length first, as 4 bytes
//! little-endian), marked `encoding = 'lz4'` beside the bytes. A webhook's JSON packs 5-8-fold; under a
//! flood of deliveries the single writer's time went mostly to copying raw bodies into the WAL, and the
//! checkpoint copied them again. Packing is done before the writer, on the request's own task
//! ([`super::NewDelivery::prepare`]), so it runs in parallel across requests. Rows written before keep the
//! raw bytes (`encoding` NULL). The Postgres store keeps raw bytes: Postgres compresses them itself (LZ4
//! TOAST) and its cost lies elsewhere.

use anyhow::{Context, Result, bail};

/// The `encoding` of a packed payload.
pub(crate) const LZ4: &str = "lz4";

/// `payload` packed: its length (u32, little-endian), then its LZ4 block.
pub(crate) fn pack(payload: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(payload)
}

/// The body a stored payload holds: `stored` itself when `encoding` is NULL, unpacked when it is `lz4`.
/// A row whose bytes do not unpack to the length they claim is an error, not a truncated body; a length no
/// LZ4 block of that size can reach is refused before anything is allocated for it.
pub(crate) fn unpack(encoding: Option<&str>, stored: Vec<u8>) -> Result<Vec<u8>> {
    match encoding {
        None => Ok(stored),
        Some(LZ4) => {
            let (size, block) = lz4_flex::block::uncompressed_size(&stored)
                .context("a packed payload too short for its length")?;
            // One LZ4 sequence of n bytes expands to at most about 255·n.
            if size > block.len().saturating_mul(255).saturating_add(16) {
                bail!(
                    "a packed payload of {} bytes claims {size} unpacked: the row is damaged",
                    stored.len()
                );
            }
            let body = lz4_flex::block::decompress(block, size)
                .map_err(|e| anyhow::anyhow!("a packed payload does not unpack: {e}"))?;
            if body.len() != size {
                bail!(
                    "a packed payload unpacked to {} bytes, not the {size} it claims: the row is damaged",
                    body.len()
                );
            }
            Ok(body)
        }
        Some(other) => bail!(
            "a payload stored with encoding {other:?}, which this version of nightshift cannot read \
             (written by a newer one?)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_comes_back_byte_for_byte_and_smaller() {
        let body = std::fs::read("tests/fixtures/webhooks/pull_request/opened.json").unwrap();
        let packed = pack(&body);
        assert!(
            packed.len() * 4 < body.len(),
            "{} of {}",
            packed.len(),
            body.len()
        );
        assert_eq!(unpack(Some(LZ4), packed).unwrap(), body);
        assert_eq!(unpack(None, body.clone()).unwrap(), body);
        assert_eq!(unpack(Some(LZ4), pack(b"")).unwrap(), b"");
    }

    #[test]
    fn a_damaged_row_is_an_error_never_a_wrong_body_or_a_huge_allocation() {
        let body = std::fs::read("tests/fixtures/webhooks/pull_request/opened.json").unwrap();
        let packed = pack(&body);
        // A length of 4 GiB on a 3 KB block: refused before allocating.
        let mut huge = packed.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = unpack(Some(LZ4), huge).unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        // A length longer than the block unpacks to: an error, not a body padded with zeros.
        let mut longer = packed.clone();
        longer[..4].copy_from_slice(&(body.len() as u32 + 1).to_le_bytes());
        assert!(unpack(Some(LZ4), longer).is_err());
        // A cut block.
        assert!(unpack(Some(LZ4), packed[..packed.len() / 2].to_vec()).is_err());
        assert!(unpack(Some(LZ4), vec![1, 2]).is_err());
        let e = unpack(Some("zstd"), packed).unwrap_err().to_string();
        assert!(e.contains("\"zstd\""), "{e}");
    }
}
