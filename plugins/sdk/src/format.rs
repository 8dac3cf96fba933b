//! Text helpers: size limits and markdown dialects.
//!
//! Policy for every first-party plugin: text over a platform's limit is
//! truncated with a visible marker ([`TRUNCATION_MARKER`]) rather than
//! rejected, because a shortened alert is more useful than none.

/// Appended to text that was cut to fit a platform's limit.
pub const TRUNCATION_MARKER: &str = "… [truncated]";

/// Cuts `text` to at most `max_chars` characters (Unicode scalar values),
/// ending with [`TRUNCATION_MARKER`] when anything was cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let keep = max_chars.saturating_sub(TRUNCATION_MARKER.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(TRUNCATION_MARKER);
    out
}

/// Converts CommonMark-style markdown to Slack's mrkdwn dialect:
/// `**b**` → `*b*`, `*i*`/`_i_` → `_i_`, `~~s~~` → `~s~`,
/// `[label](url)` → `<url|label>`, `# Heading` → `*Heading*`, `- item` →
/// `• item`, with `&`, `<` and `>` escaped. Code spans are left alone.
pub fn markdown_to_mrkdwn(markdown: &str) -> String {
    markdown
        .lines()
        .map(mrkdwn_line)
        .collect::<Vec<_>>()
        .join("\n")
}

fn mrkdwn_line(line: &str) -> String {
    let trimmed = line.trim_start();
    let indent = &line[..line.len() - trimmed.len()];
    let hashes = trimmed.chars().take_while(|&c| c == '#').count();
    if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
        return format!("{indent}*{}*", mrkdwn_inline(trimmed[hashes..].trim()));
    }
    if let Some(item) = trimmed
        .strip_prefix("- ")
        .or_else(|| trimmed.strip_prefix("* "))
    {
        return format!("{indent}• {}", mrkdwn_inline(item));
    }
    format!("{indent}{}", mrkdwn_inline(trimmed))
}

/// Converts one line, leaving `code spans` untouched.
fn mrkdwn_inline(line: &str) -> String {
    line.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                part.to_string()
            } else {
                mrkdwn_text(part)
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

fn mrkdwn_text(text: &str) -> String {
    const BOLD: &str = "\u{1}";
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let linked = convert_links(&escaped);
    let bolded = linked.replace("**", BOLD).replace("__", BOLD);
    let italic = replace_pairs(&bolded, '*', "_");
    let struck = italic.replace("~~", "~");
    struck.replace(BOLD, "*")
}

/// `[label](url)` → `<url|label>`.
fn convert_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find("](") else { break };
        let Some(end) = after[close + 2..].find(')') else {
            break;
        };
        let label = &after[..close];
        let url = &after[close + 2..close + 2 + end];
        out.push_str(&rest[..open]);
        out.push_str(&format!("<{url}|{label}>"));
        rest = &after[close + 2 + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Replaces matched pairs of `marker` (an emphasis delimiter hugging its
/// text, like `*word*`) with `with`; unmatched markers stay as they are.
fn replace_pairs(text: &str, marker: char, with: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == marker && chars.get(i + 1).is_some_and(|c| !c.is_whitespace()) {
            if let Some(len) = chars[i + 1..].iter().position(|&c| c == marker) {
                if len > 0 && !chars[i + len].is_whitespace() {
                    out.push_str(with);
                    out.extend(&chars[i + 1..i + 1 + len]);
                    out.push_str(with);
                    i += len + 2;
                    continue;
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Escapes text for HTML bodies (Telegram HTML parse mode, e-mail).
pub fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_with_marker() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate(&"x".repeat(100), 20);
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.ends_with(TRUNCATION_MARKER));
    }

    #[test]
    fn converts_markdown_to_mrkdwn() {
        assert_eq!(markdown_to_mrkdwn("**bold** and *it*"), "*bold* and _it_");
        assert_eq!(markdown_to_mrkdwn("~~gone~~"), "~gone~");
        assert_eq!(
            markdown_to_mrkdwn("see [docs](https://x.io/a)"),
            "see <https://x.io/a|docs>"
        );
        assert_eq!(markdown_to_mrkdwn("# Title"), "*Title*");
        assert_eq!(markdown_to_mrkdwn("- one\n- two"), "• one\n• two");
        assert_eq!(markdown_to_mrkdwn("a < b & c"), "a &lt; b &amp; c");
        assert_eq!(markdown_to_mrkdwn("`**raw**`"), "`**raw**`");
    }
}
