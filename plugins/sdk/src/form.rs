//! `application/x-www-form-urlencoded`: form bodies (Pushover) and query
//! values (DingTalk's signature).

/// Percent-encodes everything but the unreserved characters of RFC 3986.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `k1=v1&k2=v2`, every key and value encoded.
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_reserved_and_non_ascii() {
        assert_eq!(
            super::encode_component("a+b/c=d é"),
            "a%2Bb%2Fc%3Dd%20%C3%A9"
        );
        assert_eq!(super::encode([("m", "x&y"), ("t", "1")]), "m=x%26y&t=1");
    }
}
