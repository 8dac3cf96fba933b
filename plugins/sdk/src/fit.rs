//! Size budgets measured on what is sent, not on what went in.
//!
//! Platforms limit the *request* (Feishu: 20 KB of body; Teams: about 28 KB)
//! or count text in their own units (Telegram counts UTF-16 code units; WeCom
//! and DingTalk count UTF-8 bytes). Escaping, JSON encoding and per-line
//! structure all grow the text on its way into the request, so a cut made on
//! the input is a guess. [`largest`] instead builds the real request for a
//! candidate budget and keeps the largest budget whose request fits.

/// How a platform counts the length of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    /// Unicode scalar values (what Rust's `chars()` yields).
    Chars,
    /// UTF-16 code units: an emoji outside the BMP counts two.
    Utf16,
    /// UTF-8 bytes: a CJK character counts three.
    Bytes,
}

impl Units {
    pub fn count(self, text: &str) -> usize {
        match self {
            Units::Chars => text.chars().count(),
            Units::Utf16 => text.encode_utf16().count(),
            Units::Bytes => text.len(),
        }
    }
}

/// The largest budget in `0..=max` for which `build(budget)` is at most
/// `limit` bytes long, with what it built; `build(0)` if even that is too
/// long. `build` must grow (weakly) with its budget; it is called about
/// log2(max) times.
pub fn largest<T: AsRef<[u8]>>(limit: usize, max: usize, build: impl Fn(usize) -> T) -> T {
    let first = build(max);
    if first.as_ref().len() <= limit {
        return first;
    }
    let (mut fits, mut too_big) = (0, max);
    let mut best = None;
    while fits + 1 < too_big {
        let mid = fits + (too_big - fits) / 2;
        let candidate = build(mid);
        if candidate.as_ref().len() <= limit {
            fits = mid;
            best = Some(candidate);
        } else {
            too_big = mid;
        }
    }
    best.unwrap_or_else(|| build(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_the_platforms_units() {
        assert_eq!(Units::Chars.count("a告😀"), 3);
        assert_eq!(Units::Utf16.count("a告😀"), 4);
        assert_eq!(Units::Bytes.count("a告😀"), 8);
    }

    #[test]
    fn finds_the_largest_budget_that_fits() {
        // Each unit of budget costs 3 bytes after "encoding".
        let build = |n: usize| "abc".repeat(n);
        assert_eq!(largest(30, 100, build).len(), 30);
        assert_eq!(largest(31, 100, build).len(), 30);
        assert_eq!(largest(1000, 100, build).len(), 300);
        assert_eq!(largest(2, 100, build).len(), 0);
    }
}
