//! Slack's mrkdwn: escaping user text and cutting it where Slack's grammar
//! allows.
//!
//! In mrkdwn, `&`, `<` and `>` are control characters: `<!channel>` pings a
//! channel, `<@U123>` a user, `<url|label>` is a link, and `&lt;` is how a
//! literal `<` is written. Every user-supplied field is therefore escaped
//! ([`escape`]) — the title as much as the body — and escaped text is only
//! ever cut between whole entities and outside `<…>` constructs ([`cut`],
//! [`split`]), so no cut leaves `&l` | `t;` or half a link.

use crate::format::TRUNCATION_MARKER;

/// Escapes `&`, `<` and `>`, so user text cannot mention, link or garble.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The longest prefix of `text` of at most `max_chars` characters that ends
/// at a safe point: not inside an entity (`&amp;`) nor a `<…>` construct.
/// Prefers to end at a line break or space in the last tenth.
fn safe_prefix(text: &str, max_chars: usize) -> &str {
    let end = text
        .char_indices()
        .nth(max_chars)
        .map_or(text.len(), |(i, _)| i);
    if end == text.len() {
        return text;
    }
    let mut cut = end;
    let head = &text[..cut];
    if let Some(amp) = head.rfind('&')
        && !head[amp..].contains(';')
    {
        cut = amp;
    }
    let head = &text[..cut];
    if let Some(open) = head.rfind('<')
        && !head[open..].contains('>')
    {
        cut = open;
    }
    let head = &text[..cut];
    let floor = head.len() - head.len() / 10;
    match head.rfind(['\n', ' ']) {
        Some(space) if space >= floor && space > 0 => &text[..space + 1],
        _ => head,
    }
}

/// Cuts escaped mrkdwn to at most `max_chars` characters at a safe point,
/// marking the cut with [`TRUNCATION_MARKER`].
pub fn cut(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let keep = max_chars.saturating_sub(TRUNCATION_MARKER.chars().count());
    format!("{}{TRUNCATION_MARKER}", safe_prefix(text, keep))
}

/// Splits escaped mrkdwn into pieces of at most `size` characters, each
/// ending at a safe point (for Block Kit sections of 3,000).
pub fn split(text: &str, size: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut piece = safe_prefix(rest, size);
        if piece.is_empty() {
            // A construct longer than a whole piece: cut it anyway.
            let end = rest.char_indices().nth(size).map_or(rest.len(), |(i, _)| i);
            piece = &rest[..end];
        }
        pieces.push(piece.to_string());
        rest = &rest[piece.len()..];
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_mentions_and_links() {
        assert_eq!(
            escape("<!channel> deploy <@U024BE7LH> & <https://x|y>"),
            "&lt;!channel&gt; deploy &lt;@U024BE7LH&gt; &amp; &lt;https://x|y&gt;"
        );
    }

    #[test]
    fn never_cuts_inside_an_entity_or_a_link() {
        let text = format!("{}&lt;b", "x".repeat(2996));
        let pieces = split(&text, 3000);
        assert!(
            pieces
                .iter()
                .all(|p| !p.ends_with("&l") && !p.ends_with('&')),
            "{:?}",
            pieces.iter().map(|p| &p[p.len() - 5..]).collect::<Vec<_>>()
        );
        assert_eq!(pieces.concat(), text);
        let link = format!("{}<https://example.com/a|label> tail", "y".repeat(2990));
        let pieces = split(&link, 3000);
        assert!(
            pieces[1].starts_with("<https://example.com/a|label>"),
            "{pieces:?}"
        );
        let cutted = cut(&format!("{}&amp;&amp;&amp;", "z".repeat(95)), 100);
        assert!(
            cutted.ends_with(TRUNCATION_MARKER) && !cutted.contains("&a…"),
            "{cutted}"
        );
        for size in [1, 2, 7, 50] {
            for piece in split(&"a&amp;<b|c>".repeat(20), size) {
                assert!(piece.chars().count() <= size);
            }
        }
    }
}
