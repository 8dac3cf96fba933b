//! Text from outside (a plugin's log line, receipt or error; a relay's
//! reply) cut to the size the host keeps.
//!
//! One rule everywhere: cut on a character boundary, never inside one, and
//! say so with a visible marker, so a reader knows the end is missing.

/// What a cut text ends with.
pub const CUT_MARKER: &str = "… [truncated]";

/// `text` cut to at most `max_bytes` bytes (on a character boundary),
/// then [`CUT_MARKER`]; unchanged when it fits.
pub fn cap(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut cut = max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(CUT_MARKER);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary_with_a_marker() {
        assert_eq!(cap("short".into(), 10), "short");
        assert_eq!(cap("abcdef".into(), 3), format!("abc{CUT_MARKER}"));
        // "é" is two bytes: a cut at 1 would split it.
        assert_eq!(cap("éa".into(), 1), CUT_MARKER);
        assert_eq!(cap("aé".into(), 2), format!("a{CUT_MARKER}"));
    }
}
