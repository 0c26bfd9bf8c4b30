//! Validated strings: once you hold a `RoomTitle`, `Nickname` or
//! `MessageContent` it is trimmed and within its limits, so handlers, actors
//! and stores never re-check.

use crate::error::ChatError;

/// Upper bounds on client-supplied text, in Unicode scalar values after
/// trimming. Loaded from the environment once (see `config.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextLimits {
    /// Longest room title.
    pub title: usize,
    /// Longest nickname.
    pub nickname: usize,
    /// Longest chat message.
    pub content: usize,
}

impl Default for TextLimits {
    fn default() -> Self {
        TextLimits {
            title: 50,
            nickname: 50,
            content: 1000,
        }
    }
}

/// U+0000–U+001F and U+007F–U+009F, per docs/PROTOCOL.md.
fn is_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// Trims and checks length and characters; `allow` lists control characters
/// that are still accepted (newline and tab in messages).
fn check(raw: &str, max: usize, allow: &[char]) -> Result<String, String> {
    let trimmed = raw.trim();
    let len = trimmed.chars().count();
    if len == 0 {
        return Err("must not be empty".into());
    }
    if len > max {
        return Err(format!("must be at most {max} characters (got {len})"));
    }
    if let Some(bad) = trimmed
        .chars()
        .find(|c| is_control(*c) && !allow.contains(c))
    {
        return Err(format!(
            "must not contain control characters (found U+{:04X})",
            bad as u32
        ));
    }
    Ok(trimmed.to_owned())
}

macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident, $limit:ident, $what:literal, $err:ident, $allow:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The only constructor: trims, then enforces the limit.
            pub fn parse(raw: &str, limits: &TextLimits) -> Result<Self, ChatError> {
                check(raw, limits.$limit, $allow)
                    .map($name)
                    .map_err(|why| ChatError::$err(format!(concat!($what, " {}"), why)))
            }

            /// The trimmed text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Gives up the validated text.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

validated_string!(
    /// A room's title: 1..=limit characters, no control characters.
    RoomTitle, title, "title", InvalidTitle, &[]
);
validated_string!(
    /// A member's name within a room: 1..=limit characters, no control characters.
    Nickname, nickname, "nickname", InvalidNickname, &[]
);
validated_string!(
    /// A chat message: 1..=limit characters; newline and tab are the only
    /// control characters allowed, so multi-line messages work.
    MessageContent, content, "content", InvalidContent, &['\n', '\t']
);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TextLimits {
        TextLimits::default()
    }

    #[test]
    fn titles_are_trimmed() {
        let t = RoomTitle::parse("  general \n", &limits()).unwrap();
        assert_eq!(t.as_str(), "general");
    }

    #[test]
    fn empty_and_blank_values_are_rejected() {
        assert!(RoomTitle::parse("", &limits()).is_err());
        assert!(Nickname::parse("   \t ", &limits()).is_err());
        assert!(MessageContent::parse("\n\n", &limits()).is_err());
    }

    #[test]
    fn length_counts_scalar_values_not_bytes() {
        let fifty_emoji: String = "😀".repeat(50);
        assert!(Nickname::parse(&fifty_emoji, &limits()).is_ok());
        let fifty_one: String = "😀".repeat(51);
        let err = Nickname::parse(&fifty_one, &limits()).unwrap_err();
        assert_eq!(err.code(), "invalid_nickname");
    }

    #[test]
    fn control_characters_are_rejected_except_newline_and_tab_in_content() {
        assert!(Nickname::parse("a\u{7}b", &limits()).is_err());
        assert!(RoomTitle::parse("a\nb", &limits()).is_err());
        assert!(RoomTitle::parse("a\u{85}b", &limits()).is_err());
        assert!(MessageContent::parse("line1\nline2\tend", &limits()).is_ok());
        let err = MessageContent::parse("a\rb", &limits()).unwrap_err();
        assert_eq!(err.code(), "invalid_content");
        assert!(MessageContent::parse("a\u{0}b", &limits()).is_err());
    }

    #[test]
    fn limits_are_configurable() {
        let tight = TextLimits {
            title: 3,
            nickname: 2,
            content: 5,
        };
        assert!(RoomTitle::parse("abcd", &tight).is_err());
        assert!(RoomTitle::parse("abc", &tight).is_ok());
        assert!(Nickname::parse("abc", &tight).is_err());
        assert!(MessageContent::parse("hello!", &tight).is_err());
    }

    #[test]
    fn html_is_kept_verbatim_for_the_client_to_escape() {
        let c = MessageContent::parse("<img src=x onerror=alert(1)>", &limits()).unwrap();
        assert_eq!(c.as_str(), "<img src=x onerror=alert(1)>");
    }
}
