//! A request body of a JSON header and raw bytes, for payloads that JSON
//! would bloat (a `Vec<u8>` in serde_json is an array of numbers, 3 to 4
//! times its size): the header's length as a big-endian `u32`, the header
//! as JSON, then the bytes as they are.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The content type of a framed body.
pub const CONTENT_TYPE: &str = "application/x-flotilla-frame";

/// Why a framed body could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a framed body of {0} bytes is too short for its header length")]
    Short(usize),
    #[error("a framed body of {len} bytes cannot hold a header of {header} bytes")]
    HeaderTooLong { len: usize, header: usize },
    #[error("the header of a framed body is not valid: {0}")]
    Header(#[from] serde_json::Error),
    #[error("a frame header of {0} bytes is over the 4 GiB a frame can say")]
    Huge(usize),
}

/// Encodes `header` and `data` as one body.
pub fn encode(header: &impl Serialize, data: &[u8]) -> Result<Vec<u8>, FrameError> {
    let head = serde_json::to_vec(header)?;
    let len = u32::try_from(head.len()).map_err(|_| FrameError::Huge(head.len()))?;
    let mut out = Vec::with_capacity(4 + head.len() + data.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(data);
    Ok(out)
}

/// Decodes a body made by [`encode`] into its header and its bytes.
pub fn decode<H: DeserializeOwned>(body: &[u8]) -> Result<(H, &[u8]), FrameError> {
    let Some((len, rest)) = body.split_first_chunk::<4>() else {
        return Err(FrameError::Short(body.len()));
    };
    let header = u32::from_be_bytes(*len) as usize;
    if header > rest.len() {
        return Err(FrameError::HeaderTooLong {
            len: body.len(),
            header,
        });
    }
    let (head, data) = rest.split_at(header);
    Ok((serde_json::from_slice(head)?, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let data: Vec<u8> = (0..=255).collect();
        let body = encode(&("chunk", 7u64), &data).expect("encode");
        assert_eq!(body.len(), 4 + br#"["chunk",7]"#.len() + 256);
        let ((name, offset), bytes): ((String, u64), &[u8]) = decode(&body).expect("decode");
        assert_eq!((name.as_str(), offset, bytes), ("chunk", 7, &data[..]));
        assert!(matches!(
            decode::<u64>(&body[..3]),
            Err(FrameError::Short(3))
        ));
        let mut long = body.clone();
        long[0] = 0xff;
        assert!(matches!(
            decode::<u64>(&long),
            Err(FrameError::HeaderTooLong { .. })
        ));
        assert!(matches!(
            decode::<u64>(&body[..8]),
            Err(FrameError::HeaderTooLong { .. })
        ));
        let empty = encode(&1u8, &[]).expect("encode");
        let (one, rest): (u8, &[u8]) = decode(&empty).expect("decode");
        assert_eq!((one, rest.len()), (1, 0));
    }
}
