//! What every e-mail plugin needs, whatever carries the message: one subject
//! line, the plain text, and a safe HTML alternative.

use crate::format::{headline, markdown_to_html, plain_body};
use crate::{Format, Message, html};

/// The longest subject, in characters.
pub const SUBJECT_MAX: usize = 200;

/// The subject: the title, else the body's first non-blank line, else
/// "Notification"; on one line and at most [`SUBJECT_MAX`] characters.
pub fn subject(message: &Message) -> String {
    headline(message, SUBJECT_MAX)
}

/// The HTML alternative: markdown converted, HTML reduced to a safe subset
/// (no scripts, styles or event handlers); `None` for plain text.
pub fn html_alternative(message: &Message) -> Option<String> {
    match message.format {
        Format::Text => None,
        Format::Markdown => Some(markdown_to_html(&message.body).replace('\n', "<br>\n")),
        Format::Html => {
            let safe = html::sanitize(&message.body, &html::EMAIL);
            Some(if html::to_text(&safe).trim().is_empty() {
                html::escape(&plain_body(message))
            } else {
                safe
            })
        }
    }
}

/// The recipients in a comma-separated target: trimmed, empty entries
/// dropped. Errors name what is wrong, for `SendError::invalid`.
pub fn recipients(target: &str, max: usize) -> Result<Vec<&str>, String> {
    let list: Vec<&str> = target
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if list.is_empty() || list.iter().any(|a| !a.contains('@')) {
        return Err("the target must be one or more e-mail addresses, comma-separated".into());
    }
    if list.len() > max {
        return Err(format!("at most {max} recipients per message"));
    }
    Ok(list)
}
