//! The request and response head parsers over any byte sequence: never a
//! panic; a parsed head ends inside the input, and a parsed request
//! serialises back to the same head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wstap::proto::frame::Parsed;
use wstap::proto::http::{parse_request_head, parse_response_head};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Done(h, n)) = parse_request_head(data) {
        assert!(n <= data.len());
        let again = h.to_bytes();
        match parse_request_head(&again) {
            Ok(Parsed::Done(h2, n2)) => {
                assert_eq!(n2, again.len());
                assert_eq!(h2, h);
            }
            other => panic!("re-serialised head does not parse: {other:?}"),
        }
    }
    if let Ok(Parsed::Done(_, n)) = parse_response_head(data) {
        assert!(n <= data.len());
    }
});
