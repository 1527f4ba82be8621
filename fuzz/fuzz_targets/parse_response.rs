//! Anything a network can send to the prober: the response parser, the stream framer
//! and the URI reader must return (Ok or Err) without panicking, and whatever parses
//! must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeline::probe::codec::{parse_response, parse_uri, stream_message_len};

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = parse_response(data) {
        assert!((100..=699).contains(&resp.code));
    }
    if let Ok(Some(len)) = stream_message_len(data) {
        assert!(len <= data.len());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_uri(s);
    }
});
