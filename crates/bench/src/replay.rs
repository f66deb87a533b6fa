//! Pre-built requests (`--replay FILE`): bodies written before the run by whoever prepares
//! the load (the benchmark report writes OTLP protobuf exports and JSON batches of the same
//! spans), read whole before the clock starts and sent once each, in order, by the same
//! driver, connections and answer parsing as generated load. So a format the tool does not
//! generate (OTLP) is measured exactly as the JSON batches are, and building the bodies costs
//! the measured run nothing.
//!
//! The file is a sequence of records, each `u32` little-endian events in the body, `u32`
//! little-endian body length, then the body's bytes.

use std::collections::VecDeque;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One pre-built request body and how many events (spans) it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub events: usize,
    pub bytes: Vec<u8>,
}

/// Appends one record to `out`: the writer side, as a file's maker writes it (the report
/// bench writes its own, outside this crate).
#[cfg(test)]
pub fn write_record(out: &mut Vec<u8>, events: u32, body: &[u8]) {
    out.extend_from_slice(&events.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

/// Every record of `bytes`, in order.
pub fn parse(mut bytes: &[u8]) -> Result<VecDeque<Body>> {
    let mut bodies = VecDeque::new();
    while !bytes.is_empty() {
        if bytes.len() < 8 {
            bail!(
                "a record's header is cut short after {} bodies",
                bodies.len()
            );
        }
        let events = u32::from_le_bytes(bytes[..4].try_into()?) as usize;
        let len = u32::from_le_bytes(bytes[4..8].try_into()?) as usize;
        if events == 0 {
            bail!("record {} holds no events", bodies.len());
        }
        let Some(body) = bytes.get(8..8 + len) else {
            bail!("record {} is cut short", bodies.len());
        };
        bodies.push_back(Body {
            events,
            bytes: body.to_vec(),
        });
        bytes = &bytes[8 + len..];
    }
    if bodies.is_empty() {
        bail!("no request in the file");
    }
    Ok(bodies)
}

pub fn read(path: &Path) -> Result<VecDeque<Body>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading --replay {}", path.display()))?;
    parse(&bytes).with_context(|| format!("--replay {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_files_are_refused() {
        let mut file = Vec::new();
        write_record(&mut file, 512, b"\x0a\x03abc");
        write_record(&mut file, 1, b"[{}]");
        assert_eq!(file.len(), 8 + 5 + 8 + 4);
        let bodies = parse(&file).unwrap();
        assert_eq!(
            Vec::from(bodies),
            vec![
                Body {
                    events: 512,
                    bytes: b"\x0a\x03abc".to_vec()
                },
                Body {
                    events: 1,
                    bytes: b"[{}]".to_vec()
                },
            ]
        );
        assert!(parse(&file[..file.len() - 1]).is_err());
        assert!(parse(&file[..6]).is_err());
        assert!(parse(&[]).is_err());
        let mut empty = Vec::new();
        write_record(&mut empty, 0, b"x");
        assert!(parse(&empty).is_err());
    }
}
