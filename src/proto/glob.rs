//! Host-name patterns for `--no-intercept`: `*` matches any run of
//! characters (dots included), `?` one character, case-insensitively.

/// Whether `host` matches `pattern`.
pub fn matches(pattern: &str, host: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let h: Vec<char> = host.to_ascii_lowercase().chars().collect();
    // iterative wildcard matching with one backtrack point
    let (mut pi, mut hi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while hi < h.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == h[hi]) {
            pi += 1;
            hi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, hi));
            pi += 1;
        } else if let Some((sp, sh)) = star {
            pi = sp + 1;
            hi = sh + 1;
            star = Some((sp, sh + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns() {
        assert!(matches("*.example.com", "api.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("example.com", "EXAMPLE.com"));
        assert!(matches("api.*", "api.test"));
        assert!(matches("*", "anything"));
        assert!(matches("h?st", "host"));
        assert!(!matches("h?st", "hoost"));
        assert!(!matches("example.com", "example.com.evil"));
        assert!(matches("127.0.0.*", "127.0.0.1"));
    }
}
