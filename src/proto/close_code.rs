//! Close status codes (RFC 6455 §7.4, IANA registry): names, one-line
//! meanings, and which codes may appear on the wire at all.

/// The registry's name for a code, e.g. `Normal Closure`.
pub fn name(code: u16) -> &'static str {
    match code {
        1000 => "Normal Closure",
        1001 => "Going Away",
        1002 => "Protocol Error",
        1003 => "Unsupported Data",
        1004 => "Reserved",
        1005 => "No Status Rcvd",
        1006 => "Abnormal Closure",
        1007 => "Invalid Frame Payload Data",
        1008 => "Policy Violation",
        1009 => "Message Too Big",
        1010 => "Mandatory Ext.",
        1011 => "Internal Error",
        1012 => "Service Restart",
        1013 => "Try Again Later",
        1014 => "Bad Gateway",
        1015 => "TLS Handshake",
        0..=999 => "Invalid",
        1016..=2999 => "Unassigned",
        3000..=3999 => "Library/Framework",
        4000..=4999 => "Private Use",
        _ => "Invalid",
    }
}

/// What a code tells the user, in one line.
pub fn meaning(code: u16) -> &'static str {
    match code {
        1000 => "the purpose of the connection was fulfilled",
        1001 => "the endpoint is going away: a server shutting down or a browser leaving the page",
        1002 => "the endpoint saw a protocol error",
        1003 => "the endpoint received a type of data it cannot accept (e.g. binary for a text-only endpoint)",
        1004 => "reserved; never valid",
        1005 => "no status code was present; never sent on the wire, only reported by APIs",
        1006 => "the connection dropped without a close frame; never sent on the wire, only reported by APIs",
        1007 => "a message's data did not match its type (e.g. invalid UTF-8 in a text message)",
        1008 => "the message violated the endpoint's policy (often authentication or origin checks)",
        1009 => "a message was too big for the endpoint to process",
        1010 => "the client expected the server to negotiate an extension it did not",
        1011 => "the server hit an unexpected condition (an exception in the handler)",
        1012 => "the service is restarting; reconnect",
        1013 => "the service is overloaded; try again later",
        1014 => "a gateway or proxy got an invalid response from the upstream",
        1015 => "the TLS handshake failed; never sent on the wire, only reported by APIs",
        3000..=3999 => "a code registered by a library or framework",
        4000..=4999 => "an application-defined code",
        _ => "not a valid close code",
    }
}

/// Whether a close frame may carry this code (§7.4.1, §7.4.2): 1005, 1006
/// and 1015 are for APIs only; 1004 and unassigned codes are invalid.
pub fn valid_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry() {
        assert_eq!(name(1000), "Normal Closure");
        assert_eq!(name(4001), "Private Use");
        for c in 1000..=1015 {
            assert_ne!(name(c), "Unassigned", "{c}");
        }
        assert!(valid_on_wire(1000) && valid_on_wire(1014) && valid_on_wire(4999));
        for c in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!valid_on_wire(c), "{c}");
        }
        assert!(meaning(1006).contains("never sent on the wire"));
        assert!(meaning(1015).contains("never sent on the wire"));
    }
}
