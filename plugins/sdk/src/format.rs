//! Text helpers: size limits and markdown dialects.
//!
//! Policy for every first-party plugin: text over a platform's limit is
//! truncated with a visible marker ([`TRUNCATION_MARKER`]) rather than
//! rejected, because a shortened alert is more useful than none.

/// Appended to text that was cut to fit a platform's limit.
pub const TRUNCATION_MARKER: &str = "… [truncated]";

/// Sent instead of a body with no visible text, for platforms that refuse
/// an empty message.
pub const EMPTY_BODY: &str = "(empty message)";

/// `text`, or [`EMPTY_BODY`] when it has nothing but white space.
pub fn or_placeholder(text: String) -> String {
    if text.trim().is_empty() {
        EMPTY_BODY.to_string()
    } else {
        text
    }
}

/// The body as plain text for platforms without HTML (HTML bodies lose
/// their tags), never empty.
pub fn plain_body(message: &crate::Message) -> String {
    or_placeholder(match message.format {
        crate::Format::Html => crate::html::to_text(&message.body),
        crate::Format::Text | crate::Format::Markdown => message.body.clone(),
    })
}

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

/// Cuts `text` to at most `max_units` UTF-16 code units (how LINE and
/// Telegram count: an emoji outside the BMP is two), on a character
/// boundary, ending with [`TRUNCATION_MARKER`] when anything was cut.
pub fn truncate_utf16(text: &str, max_units: usize) -> String {
    if text.encode_utf16().count() <= max_units {
        return text.to_string();
    }
    let mut room = max_units.saturating_sub(TRUNCATION_MARKER.encode_utf16().count());
    let mut out = String::new();
    for c in text.chars() {
        let Some(left) = room.checked_sub(c.len_utf16()) else {
            break;
        };
        room = left;
        out.push(c);
    }
    out.push_str(TRUNCATION_MARKER);
    out
}

/// Cuts `text` to at most `max_bytes` bytes of UTF-8 on a character
/// boundary, ending with [`TRUNCATION_MARKER`] when anything was cut. For
/// platforms that count bytes (WeCom, DingTalk, Feishu), where a CJK
/// character is three.
pub fn truncate_bytes(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut cut = max_bytes.saturating_sub(TRUNCATION_MARKER.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{TRUNCATION_MARKER}", &text[..cut])
}

/// Converts CommonMark-style markdown to the small HTML subset that
/// Telegram, Pushover and e-mail clients share: `**b**` → `<b>`, `*i*` →
/// `<i>`, `~~s~~` → `<s>`, `` `c` `` → `<code>`, `[l](u)` → `<a href>`,
/// headings → bold lines, `- item` → `• item`; everything else escaped.
pub fn markdown_to_html(markdown: &str) -> String {
    markdown
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let hashes = trimmed.chars().take_while(|&c| c == '#').count();
            if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
                return format!("<b>{}</b>", html_inline(trimmed[hashes..].trim()));
            }
            if let Some(item) = trimmed
                .strip_prefix("- ")
                .or_else(|| trimmed.strip_prefix("* "))
            {
                return format!("• {}", html_inline(item));
            }
            html_inline(line)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn html_inline(line: &str) -> String {
    line.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{}</code>", escape_html(part))
            } else {
                html_text(part)
            }
        })
        .collect()
}

fn html_text(text: &str) -> String {
    const BOLD: char = '\u{1}';
    let escaped = escape_html(text);
    let linked = convert_links(&escaped, |label, url| {
        format!("<a href=\"{}\">{label}</a>", url.replace('"', "&quot;"))
    });
    let bolded = linked.replace("**", "\u{1}").replace("__", "\u{1}");
    let bolded = replace_pairs_with(&bolded, BOLD, "<b>", "</b>");
    let italic = replace_pairs_with(&bolded, '*', "<i>", "</i>");
    let struck = italic.replace("~~", "\u{2}");
    replace_pairs_with(&struck, '\u{2}', "<s>", "</s>")
}

/// Replaces matched pairs of `marker` (an emphasis delimiter hugging its
/// text, like `*word*`) with `open` … `close`; unmatched markers stay.
fn replace_pairs_with(text: &str, marker: char, open: &str, close: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == marker
            && chars.get(i + 1).is_some_and(|c| !c.is_whitespace())
            && let Some(len) = chars[i + 1..].iter().position(|&c| c == marker)
            && len > 0
            && !chars[i + len].is_whitespace()
        {
            out.push_str(open);
            out.extend(&chars[i + 1..i + 1 + len]);
            out.push_str(close);
            i += len + 2;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// One line that names the message: the title, else the body's first
/// non-blank line, else "Notification"; control characters (line breaks
/// included) become spaces, and it is cut to `max_chars` with a marker.
/// For e-mail subjects and alert summaries.
pub fn headline(message: &crate::Message, max_chars: usize) -> String {
    let plain = plain_body(message);
    let line = [message.title.as_deref().unwrap_or_default()]
        .into_iter()
        .chain(plain.lines())
        .map(one_line)
        .find(|line| !line.is_empty())
        .unwrap_or_else(|| "Notification".into());
    truncate(&line, max_chars)
}

/// `text` on one line: control characters become spaces, ends trimmed.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
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
    let linked = convert_links(&escaped, |label, url| format!("<{url}|{label}>"));
    let bolded = linked.replace("**", BOLD).replace("__", BOLD);
    let italic = replace_pairs(&bolded, '*', "_");
    let struck = italic.replace("~~", "~");
    struck.replace(BOLD, "*")
}

/// Rewrites each `[label](url)` with `link(label, url)` when the URL is
/// one a notification may link to (`http`, `https`, `mailto`); any other
/// (`javascript:`, `data:`, …) is left as the text it was written as.
fn convert_links(text: &str, link: impl Fn(&str, &str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find("](") else { break };
        let Some(end) = after[close + 2..].find(')') else {
            break;
        };
        let (label, url) = (&after[..close], &after[close + 2..close + 2 + end]);
        out.push_str(&rest[..open]);
        if linkable(url) {
            out.push_str(&link(label, url));
        } else {
            out.push_str(&rest[open..open + 1 + close + 2 + end + 1]);
        }
        rest = &after[close + 2 + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether a markdown link's URL may become a link.
fn linkable(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    ["http://", "https://", "mailto:"]
        .iter()
        .any(|scheme| lower.starts_with(scheme))
        && !url.contains(['<', '>', '|', '"'])
}

/// Replaces matched pairs of `marker` (an emphasis delimiter hugging its
/// text, like `*word*`) with `with`; unmatched markers stay as they are.
fn replace_pairs(text: &str, marker: char, with: &str) -> String {
    replace_pairs_with(text, marker, with, with)
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
    fn truncates_bytes_on_char_boundaries() {
        let text = "告警".repeat(3000);
        let cut = truncate_bytes(&text, 4096);
        assert!(cut.len() <= 4096 && cut.ends_with(TRUNCATION_MARKER));
        assert_eq!(truncate_bytes("ok", 4096), "ok");
    }

    #[test]
    fn converts_markdown_to_html() {
        assert_eq!(
            markdown_to_html(
                "# Disk\n**full** on *db1* & `a<b`\n- see [runbook](https://x.io/?a=1&b=2)"
            ),
            "<b>Disk</b>\n<b>full</b> on <i>db1</i> &amp; <code>a&lt;b</code>\n• see <a href=\"https://x.io/?a=1&amp;b=2\">runbook</a>"
        );
        assert_eq!(markdown_to_html("~~old~~ 2 * 3"), "<s>old</s> 2 * 3");
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
        assert_eq!(
            markdown_to_mrkdwn("[x](javascript:alert(1))"),
            "[x](javascript:alert(1))"
        );
        assert_eq!(
            markdown_to_html("[x](data:text/html,1)"),
            "[x](data:text/html,1)"
        );
    }
}
