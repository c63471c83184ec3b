//! Property tests of the HTTP head parsers the raw path runs on every
//! client request and upstream response: no byte sequence makes them
//! panic; a head cut short is "incomplete", never a different head; a
//! parsed request serialises back to the same head; bytes after a head
//! are never taken as part of it. Redaction, which runs on every head's
//! views, never panics either and leaves harmless values alone.

use proptest::prelude::*;
use wstap::proto::frame::Parsed;
use wstap::proto::http::{parse_request_head, parse_response_head, RequestHead};
use wstap::proto::redact;

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,15}"
}

fn arb_request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just("GET"), Just("POST"), Just("OPTIONS"), Just("PUT")],
        "/[a-z0-9/._~%-]{0,40}(\\?[a-z0-9=&]{0,20})?",
        prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")],
        proptest::collection::vec((token(), "[ -~]{0,40}"), 0..12),
    )
        .prop_map(|(m, t, v, headers)| {
            let mut out = format!("{m} {t} {v}\r\n").into_bytes();
            for (n, val) in headers {
                out.extend_from_slice(format!("{n}: {}\r\n", val.trim()).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out
        })
}

fn arb_response() -> impl Strategy<Value = Vec<u8>> {
    (
        100u16..600,
        "[A-Za-z ]{0,20}",
        proptest::collection::vec((token(), "[ -~]{0,40}"), 0..12),
    )
        .prop_map(|(status, reason, headers)| {
            let mut out = format!("HTTP/1.1 {status} {}\r\n", reason.trim()).into_bytes();
            for (n, val) in headers {
                out.extend_from_slice(format!("{n}: {}\r\n", val.trim()).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out
        })
}

fn done_request(buf: &[u8]) -> Option<(RequestHead, usize)> {
    match parse_request_head(buf) {
        Ok(Parsed::Done(h, n)) => Some((h, n)),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_request_head(&bytes);
        let _ = parse_response_head(&bytes);
    }

    #[test]
    fn a_valid_request_parses_whole_and_every_prefix_is_incomplete(
        head in arb_request(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buf = head.clone();
        buf.extend_from_slice(&body);
        let (h, n) = done_request(&buf).expect("a valid head parses");
        prop_assert_eq!(n, head.len(), "the body is not part of the head");
        for k in 0..head.len() {
            prop_assert!(
                matches!(parse_request_head(&head[..k]), Ok(Parsed::Incomplete)),
                "prefix of {} bytes", k
            );
        }
        // what wstap would write upstream after a rewrite reads back the same
        let again = h.to_bytes();
        let (h2, n2) = done_request(&again).expect("re-serialised head parses");
        prop_assert_eq!(n2, again.len());
        prop_assert_eq!(h2, h);
    }

    #[test]
    fn a_valid_response_parses_whole_and_every_prefix_is_incomplete(head in arb_response()) {
        let n = match parse_response_head(&head) {
            Ok(Parsed::Done(_, n)) => n,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(n, head.len());
        for k in 0..head.len() {
            prop_assert!(matches!(parse_response_head(&head[..k]), Ok(Parsed::Incomplete)));
        }
    }

    /// A valid head with bytes broken: never a panic; when it still
    /// parses, the head ends inside the input and re-serialises to itself.
    #[test]
    fn mutated_heads_never_panic(
        head in arb_request(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut buf = head;
        for (i, b) in &flips {
            let i = i.index(buf.len());
            buf[i] = *b;
        }
        let _ = parse_response_head(&buf);
        if let Some((h, n)) = done_request(&buf) {
            prop_assert!(n <= buf.len());
            let again = h.to_bytes();
            prop_assert_eq!(done_request(&again).map(|(h, _)| h), Some(h));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn redaction_never_panics_and_only_touches_secrets(
        target in "\\PC{0,80}",
        name in prop_oneof![
            Just("Authorization".to_string()),
            Just("Cookie".to_string()),
            Just("Set-Cookie".to_string()),
            Just("Sec-WebSocket-Protocol".to_string()),
            Just("X-Api-Key".to_string()),
            token(),
        ],
        value in "\\PC{0,80}",
        note in "\\PC{0,80}",
    ) {
        let t = redact::target(&target);
        if !target.contains('?') && !target.contains('@') {
            prop_assert_eq!(t.as_ref(), target.as_str());
        }
        let v = redact::header_value(&name, &value);
        if !redact::is_secret_header(&name) && !name.eq_ignore_ascii_case("sec-websocket-protocol") {
            prop_assert_eq!(v.as_ref(), value.as_str());
        }
        let _ = redact::rewrite_note(&note);
        let _ = redact::rewrite_note(&format!("request: set {name}: {value} (was {note:?})"));
    }
}

proptest! {
    #[test]
    fn a_secret_header_value_never_survives(
        name in prop_oneof![
            Just("Authorization"),
            Just("proxy-authorization"),
            Just("COOKIE"),
            Just("Set-Cookie"),
            Just("X-Api-Key"),
            Just("x-auth-token"),
        ],
        scheme in proptest::option::of("[A-Za-z]{3,8}"),
        secret in "[0-9A-F]{8,40}",
        param in prop_oneof![Just("token"), Just("access_token"), Just("API_KEY"), Just("X-Amz-Signature")],
    ) {
        let value = match &scheme {
            Some(s) => format!("{s} {secret}"),
            None => secret.clone(),
        };
        let shown = redact::header_value(name, &value);
        prop_assert!(!shown.contains(&secret), "{} -> {}", value, shown);
        prop_assert!(shown.contains("<redacted "), "{}", shown);
        let target = format!("/p?a=1&{param}={secret}&b=2");
        let shown = redact::target(&target);
        prop_assert!(!shown.contains(&secret), "{}", shown);
        prop_assert!(shown.starts_with("/p?a=1&") && shown.ends_with("&b=2"));
    }
}
