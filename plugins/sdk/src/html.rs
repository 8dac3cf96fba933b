//! HTML for platforms that render a small subset of it: reducing any input
//! to that subset, and cutting it without breaking it.
//!
//! Telegram's HTML parse mode knows a dozen tags and answers 400 "can't
//! parse entities" for anything else, for an unclosed tag, or for a stray
//! `<` or `&`; Pushover and e-mail have their own, wider subsets. So:
//!
//! - [`sanitize`] reads arbitrary HTML (a tolerant tokenizer, not a full
//!   HTML5 parser) and writes only the [`Policy`]'s tags, properly nested
//!   and closed, with their allowed attributes (links only to `http`,
//!   `https`, `mailto` and `tg`); other tags are dropped (their text kept,
//!   except inside `script`, `style` and the like); text is decoded and
//!   escaped again, so the output holds no entity a platform does not know;
//! - [`cut`] shortens such output to a length in the platform's units,
//!   never inside a tag or an entity, closing whatever is open and marking
//!   the cut;
//! - [`to_text`] turns HTML into plain text, for platforms without HTML.
//!
//! Why not `ammonia`: it pulls in html5ever, which would multiply the size of
//! every plugin that formats text, for inputs that are short notifications.

use crate::fit::Units;
use crate::format::TRUNCATION_MARKER;

/// Which tags and attributes a platform renders.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub tags: &'static [&'static str],
    /// `(tag, attribute)` pairs kept.
    pub attributes: &'static [(&'static str, &'static str)],
    /// Tags written without a closing tag (`<br>`).
    pub void: &'static [&'static str],
}

/// Telegram Bot API `parse_mode: HTML`.
pub const TELEGRAM: Policy = Policy {
    tags: &[
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "a",
        "code",
        "pre",
        "blockquote",
        "tg-spoiler",
    ],
    attributes: &[("a", "href")],
    void: &[],
};

/// Pushover messages with `html=1`.
pub const PUSHOVER: Policy = Policy {
    tags: &["b", "i", "u", "a", "font"],
    attributes: &[("a", "href"), ("font", "color")],
    void: &[],
};

/// E-mail bodies: structure and emphasis, nothing active.
pub const EMAIL: Policy = Policy {
    tags: &[
        "b",
        "strong",
        "i",
        "em",
        "u",
        "s",
        "a",
        "code",
        "pre",
        "blockquote",
        "p",
        "br",
        "ul",
        "ol",
        "li",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
    ],
    attributes: &[("a", "href")],
    void: &["br", "hr"],
};

/// Tags whose content is dropped along with them.
const DROP_CONTENT: &[&str] = &[
    "script", "style", "head", "title", "template", "noscript", "iframe", "object",
];
/// Tags that end a line when the policy drops them.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "blockquote",
    "pre",
    "ul",
    "ol",
    "table",
];

enum Token<'a> {
    Text(&'a str),
    Tag(Tag),
}

struct Tag {
    name: String,
    closing: bool,
    attributes: Vec<(String, String)>,
}

/// Splits HTML into text and tags; comments and doctypes are skipped, and a
/// `<` that does not start a tag is text.
fn tokens(input: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    let bytes = input.as_bytes();
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        let next = bytes.get(i + 1).copied();
        let end = match next {
            Some(b'!') | Some(b'?') => {
                let close = if input[i..].starts_with("<!--") {
                    "-->"
                } else {
                    ">"
                };
                input[i..].find(close).map(|e| (i + e + close.len(), None))
            }
            Some(c) if c == b'/' || c.is_ascii_alphabetic() => {
                tag_end(input, i).map(|e| (e, parse_tag(&input[i + 1..e - 1])))
            }
            _ => {
                i += 1;
                continue;
            }
        };
        let Some((end, tag)) = end else {
            // An unterminated tag: the rest is text.
            break;
        };
        if text_start < i {
            out.push(Token::Text(&input[text_start..i]));
        }
        if let Some(tag) = tag {
            out.push(Token::Tag(tag));
        }
        i = end;
        text_start = end;
    }
    if text_start < input.len() {
        out.push(Token::Text(&input[text_start..]));
    }
    out
}

/// The index after the `>` closing the tag that starts at `start`, skipping
/// quoted attribute values.
fn tag_end(input: &str, start: usize) -> Option<usize> {
    let mut quote = None;
    for (offset, c) in input[start..].char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(start + offset + 1),
            _ => {}
        }
    }
    None
}

fn parse_tag(inner: &str) -> Option<Tag> {
    let (closing, inner) = match inner.strip_prefix('/') {
        Some(rest) => (true, rest),
        None => (false, inner),
    };
    let inner = inner.trim_end_matches('/');
    let name_end = inner
        .find(|c: char| c.is_whitespace() || c == '/')
        .unwrap_or(inner.len());
    let name = inner[..name_end].to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    let mut attributes = Vec::new();
    let mut rest = inner[name_end..].trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let key = rest[..key_end].to_ascii_lowercase();
        rest = rest[key_end..].trim_start();
        let mut value = String::new();
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (v, remaining) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let end = body.find(q).unwrap_or(body.len());
                    (&body[..end], body.get(end + 1..).unwrap_or(""))
                }
                _ => {
                    let end = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            value = decode(v);
            rest = remaining.trim_start();
        }
        if !key.is_empty() {
            attributes.push((key, value));
        }
        if key_end == 0 && !rest.is_empty() {
            rest = &rest[rest.chars().next().map_or(1, char::len_utf8)..];
        }
    }
    Some(Tag {
        name,
        closing,
        attributes,
    })
}

/// Decodes the entities a notification is likely to hold; anything else
/// stays as written (and is escaped again on the way out).
fn decode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let entity = after.find(';').filter(|&e| e <= 10).map(|e| &after[..e]);
        let decoded = entity.and_then(|e| match e {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => {
                let n = match e.strip_prefix("#x").or_else(|| e.strip_prefix("#X")) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => e.strip_prefix('#').and_then(|d| d.parse().ok()),
                };
                n.and_then(char::from_u32).filter(|c| *c != '\0')
            }
        });
        match (entity, decoded) {
            (Some(e), Some(c)) => {
                out.push(c);
                rest = &after[e.len() + 1..];
            }
            _ => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes text for HTML (`&`, `<`, `>` and, for attributes, `"`).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn safe_href(href: &str) -> bool {
    let lower = href.trim().to_ascii_lowercase();
    ["http://", "https://", "mailto:", "tg://"]
        .iter()
        .any(|scheme| lower.starts_with(scheme))
}

/// Rewrites `input` as HTML that only uses `policy`'s tags, properly nested
/// and closed.
pub fn sanitize(input: &str, policy: &Policy) -> String {
    let mut out = String::with_capacity(input.len());
    let mut open: Vec<&'static str> = Vec::new();
    let mut dropping: Option<String> = None;
    for token in tokens(input) {
        let tag = match token {
            Token::Text(text) => {
                if dropping.is_none() {
                    out.push_str(&escape(&decode(text)));
                }
                continue;
            }
            Token::Tag(tag) => tag,
        };
        if let Some(dropped) = &dropping {
            if tag.closing && tag.name == *dropped {
                dropping = None;
            }
            continue;
        }
        if DROP_CONTENT.contains(&tag.name.as_str()) {
            if !tag.closing {
                dropping = Some(tag.name);
            }
            continue;
        }
        let allowed = policy.tags.iter().find(|t| **t == tag.name).copied();
        // Nothing nests inside code; only code nests inside pre.
        let in_code = open.last().is_some_and(|t| *t == "code");
        let in_pre = open.last().is_some_and(|t| *t == "pre");
        let nestable = !in_code && (!in_pre || tag.name == "code");
        match allowed {
            Some(name) if tag.closing => {
                if let Some(at) = open.iter().rposition(|t| *t == name) {
                    for closed in open.drain(at..).rev() {
                        out.push_str(&format!("</{closed}>"));
                    }
                }
            }
            Some(name) if nestable || (tag.closing && open.contains(&name)) => {
                let mut written = format!("<{name}");
                for (key, value) in &tag.attributes {
                    if !policy.attributes.contains(&(name, key.as_str())) {
                        continue;
                    }
                    if key == "href" && !safe_href(value) {
                        continue;
                    }
                    written.push_str(&format!(" {key}=\"{}\"", escape(value)));
                }
                if name == "a" && !written.contains("href=") {
                    continue;
                }
                written.push('>');
                out.push_str(&written);
                if !policy.void.contains(&name) {
                    open.push(name);
                }
            }
            _ if BLOCKS.contains(&tag.name.as_str()) && !out.is_empty() && !out.ends_with('\n') => {
                if tag.name == "li" && !tag.closing {
                    out.push_str("\n• ");
                } else if tag.closing || matches!(tag.name.as_str(), "br" | "hr") {
                    out.push('\n');
                }
            }
            _ if tag.name == "li" && !tag.closing => out.push_str("• "),
            _ => {}
        }
    }
    for closed in open.into_iter().rev() {
        out.push_str(&format!("</{closed}>"));
    }
    out
}

/// Plain text from HTML: tags dropped (block tags end lines), entities
/// decoded.
pub fn to_text(input: &str) -> String {
    const NONE: Policy = Policy {
        tags: &[],
        attributes: &[],
        void: &[],
    };
    decode(&sanitize(input, &NONE))
}

/// Cuts HTML made by [`sanitize`] (or escaped text) to at most `max` in
/// `units`, counting tags and entities as written (so the visible text is
/// shorter still): never inside a tag or an entity, with every open tag
/// closed and [`TRUNCATION_MARKER`] where it was cut.
pub fn cut(html: &str, max: usize, units: Units) -> String {
    if units.count(html) <= max {
        return html.to_string();
    }
    let marker = units.count(TRUNCATION_MARKER);
    let mut out = String::new();
    let mut open: Vec<String> = Vec::new();
    let closers = |open: &[String]| open.iter().map(|t| t.len() + 3).sum::<usize>();
    let mut used = 0;
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        let atom_len = match c {
            '<' => rest.find('>').map_or(rest.len(), |e| e + 1),
            '&' => rest.find(';').filter(|e| *e <= 10).map_or(1, |e| e + 1),
            _ => c.len_utf8(),
        };
        let atom = &rest[..atom_len];
        let tag = atom.strip_prefix('<').map(|t| t.trim_end_matches('>'));
        let opening = tag.filter(|t| !t.starts_with('/'));
        let name = |t: &str| t.split([' ', '/']).next().unwrap_or_default().to_string();
        let extra_closer = opening.map_or(0, |t| name(t).len() + 3);
        let cost = units.count(atom);
        if used + cost + closers(&open) + extra_closer + marker > max {
            break;
        }
        used += cost;
        out.push_str(atom);
        match tag {
            Some(t) if t.starts_with('/') => {
                open.pop();
            }
            Some(t) if !t.ends_with('/') && !matches!(name(t).as_str(), "br" | "hr") => {
                open.push(name(t))
            }
            _ => {}
        }
        rest = &rest[atom_len..];
    }
    out.push_str(TRUNCATION_MARKER);
    for tag in open.into_iter().rev() {
        out.push_str(&format!("</{tag}>"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_html_to_the_policy() {
        assert_eq!(
            sanitize(
                "<div>Hi <script>alert(1)</script><b>there</b></div>",
                &TELEGRAM
            ),
            "Hi <b>there</b>\n"
        );
        assert_eq!(sanitize("<b><i>x</b> y", &TELEGRAM), "<b><i>x</i></b> y");
        assert_eq!(sanitize("a < b && c", &TELEGRAM), "a &lt; b &amp;&amp; c");
        assert_eq!(
            sanitize(
                "<a href=\"javascript:x\">no</a> <a href='https://x.io/?a=1&amp;b=2'>yes</a>",
                &TELEGRAM
            ),
            "no <a href=\"https://x.io/?a=1&amp;b=2\">yes</a>"
        );
        assert_eq!(sanitize("<b>unclosed", &TELEGRAM), "<b>unclosed</b>");
        assert_eq!(
            sanitize("<code><b>x</b></code>", &TELEGRAM),
            "<code>x</code>"
        );
        assert_eq!(
            sanitize("<p onclick=\"x\">p</p><br>", &EMAIL),
            "<p>p</p><br>"
        );
        assert_eq!(
            sanitize("&bogus; &#x1F600; &#0;", &TELEGRAM),
            "&amp;bogus; 😀 &amp;#0;"
        );
        assert_eq!(to_text("<p>a &amp; b</p><p>c</p>"), "a & b\nc\n");
    }

    #[test]
    fn cuts_between_tags_and_closes_them() {
        let html = sanitize(
            &format!("<b>{}</b> <i>tail</i>", "x".repeat(100)),
            &TELEGRAM,
        );
        let cut = cut(&html, 50, Units::Utf16);
        assert!(Units::Utf16.count(&cut) <= 50, "{cut}");
        assert!(cut.ends_with(&format!("{TRUNCATION_MARKER}</b>")), "{cut}");
        let entities = cut_all("&amp;".repeat(40));
        assert!(!entities.contains("&am…"), "{entities}");
    }

    fn cut_all(html: String) -> String {
        cut(&html, 37, Units::Chars)
    }

    #[test]
    fn hostile_input_always_yields_balanced_output() {
        for input in [
            "<<<>>>",
            "<b",
            "</b></i>",
            "<a href=",
            "<!-- x",
            "<b><b><b>",
            "<pre><code>x</pre>",
            "<tg-spoiler>s</tg-spoiler>",
            "<scr<script>ipt>",
            "\u{0}<b>\u{202e}</b>",
        ] {
            let out = sanitize(input, &TELEGRAM);
            let opens = out.matches("<b>").count();
            assert_eq!(opens, out.matches("</b>").count(), "{input:?} → {out:?}");
            assert!(!out.contains("<scr"), "{input:?} → {out:?}");
            for max in [0, 5, 20] {
                let c = cut(
                    &out,
                    max.max(TRUNCATION_MARKER.chars().count() + 10),
                    Units::Chars,
                );
                assert_eq!(c.matches("<b>").count(), c.matches("</b>").count(), "{c}");
            }
        }
    }
}
