//! Validated strings: once you hold a `RoomTitle`, `Nickname` or
//! `MessageContent` it is in Unicode Normalization Form C, trimmed and
//! within its limits, so handlers, actors and stores never re-check.
//!
//! Titles and nicknames identify rooms and people, so they also refuse
//! format characters (general category Cf: zero-width spaces and joiners,
//! direction overrides, the soft hyphen, ...), which would let two names
//! that look the same differ. Message content keeps them: zero-width joiners
//! are part of emoji sequences and direction marks of bidirectional text.
//! Being NFC, two canonically equivalent spellings (`é` and `e` + U+0301) are
//! one nickname, so the uniqueness checks, which compare exactly, see them as
//! the same. The rules are those of docs/PROTOCOL.md (Conventions, Limits).

use std::borrow::Cow;

use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::ChatError;

/// Upper bounds on client-supplied text, in Unicode scalar values after
/// NFC normalization and trimming. Loaded from the environment once (see
/// `config.rs`).
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

/// General category Cf (format characters): invisible characters such as
/// U+200B ZERO WIDTH SPACE, U+202E RIGHT-TO-LEFT OVERRIDE or U+00AD SOFT
/// HYPHEN.
fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// What a kind of text accepts beyond the common rules.
struct Rules {
    /// Control characters that are still accepted (newline and tab in
    /// messages).
    allow_controls: &'static [char],
    /// Whether format characters (Cf) are accepted.
    allow_format: bool,
}

/// `text` in NFC, copied only when it is not already: every chat passes
/// here, and nearly all text is NFC as sent (ASCII always is), so the quick
/// check spares the char-by-char copy (it was 6% of the server's CPU in
/// the small-rooms profile, docs/PERFORMANCE.md).
fn nfc(text: &str) -> Cow<'_, str> {
    if text.is_ascii() || is_nfc_quick(text.chars()) == IsNormalized::Yes {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfc().collect())
    }
}

/// Normalizes to NFC, trims, and checks length and characters; the result
/// is NFC and trimmed, so checking it again gives it back unchanged.
fn check(raw: &str, max: usize, rules: &Rules) -> Result<String, String> {
    let normalized = nfc(raw.trim());
    // Trimming again keeps the result trimmed even if normalization ever
    // changed what is at the ends (it does not for any current character).
    let trimmed = normalized.trim();
    let len = trimmed.chars().count();
    if len == 0 {
        return Err("must not be empty".into());
    }
    if len > max {
        return Err(format!("must be at most {max} characters (got {len})"));
    }
    if let Some(bad) = trimmed
        .chars()
        .find(|c| is_control(*c) && !rules.allow_controls.contains(c))
    {
        return Err(format!(
            "must not contain control characters (found U+{:04X})",
            bad as u32
        ));
    }
    if !rules.allow_format {
        if let Some(bad) = trimmed.chars().find(|c| is_format(*c)) {
            return Err(format!(
                "must not contain invisible format characters (found U+{:04X})",
                bad as u32
            ));
        }
    }
    Ok(trimmed.to_owned())
}

macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident, $limit:ident, $what:literal, $err:ident, $rules:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The only constructor: normalizes to NFC, trims, then
            /// enforces the limit and the character rules.
            pub fn parse(raw: &str, limits: &TextLimits) -> Result<Self, ChatError> {
                check(raw, limits.$limit, &$rules)
                    .map($name)
                    .map_err(|why| ChatError::$err(format!(concat!($what, " {}"), why)))
            }

            /// The normalized, trimmed text.
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
    /// A room's title: 1..=limit characters, no control or format characters.
    RoomTitle, title, "title", InvalidTitle,
    Rules { allow_controls: &[], allow_format: false }
);
validated_string!(
    /// A member's name within a room: 1..=limit characters, no control or
    /// format characters.
    Nickname, nickname, "nickname", InvalidNickname,
    Rules { allow_controls: &[], allow_format: false }
);
validated_string!(
    /// A chat message: 1..=limit characters; newline and tab are the only
    /// control characters allowed, so multi-line messages work. Format
    /// characters are kept (emoji ZWJ sequences, bidirectional text).
    MessageContent, content, "content", InvalidContent,
    Rules { allow_controls: &['\n', '\t'], allow_format: true }
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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

    /// Zero-width characters, direction embeddings, overrides and isolates,
    /// the soft hyphen, the byte order mark, a tag character.
    const SOME_FORMAT_CHARS: &[char] = &[
        '\u{AD}',
        '\u{200B}',
        '\u{200C}',
        '\u{200D}',
        '\u{200E}',
        '\u{200F}',
        '\u{202A}',
        '\u{202B}',
        '\u{202C}',
        '\u{202D}',
        '\u{202E}',
        '\u{2060}',
        '\u{2066}',
        '\u{2067}',
        '\u{2068}',
        '\u{2069}',
        '\u{FEFF}',
        '\u{E0041}',
    ];

    #[test]
    fn format_characters_are_refused_in_titles_and_nicknames() {
        let err = Nickname::parse("alice\u{200B}", &limits()).unwrap_err();
        assert_eq!(err.code(), "invalid_nickname");
        assert!(err.to_string().contains("U+200B"), "{err}");
        let err = RoomTitle::parse("evil\u{202E}txt.exe", &limits()).unwrap_err();
        assert_eq!(err.code(), "invalid_title");
        for &c in SOME_FORMAT_CHARS {
            assert!(is_format(c), "U+{:04X} is Cf", c as u32);
            for text in [format!("{c}bob"), format!("b{c}ob"), format!("bob{c}")] {
                assert!(Nickname::parse(&text, &limits()).is_err(), "{text:?}");
                assert!(RoomTitle::parse(&text, &limits()).is_err(), "{text:?}");
            }
        }
        // A nickname made of format characters only is not blank: trimming
        // does not remove them (they are not White_Space), the Cf rule does.
        assert!(Nickname::parse("\u{200B}\u{FEFF}", &limits()).is_err());
    }

    #[test]
    fn content_keeps_format_characters() {
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        let c = MessageContent::parse(family, &limits()).unwrap();
        assert_eq!(c.as_str(), family);
        let c = MessageContent::parse("abc \u{2067}\u{5D0}\u{5D1}\u{2069} def", &limits()).unwrap();
        assert!(c.as_str().contains('\u{2067}'));
        // ...so an emoji ZWJ sequence is a valid message but not a nickname.
        assert!(Nickname::parse(family, &limits()).is_err());
    }

    #[test]
    fn text_is_normalized_to_nfc() {
        let decomposed = Nickname::parse("Jose\u{301}", &limits()).unwrap();
        let precomposed = Nickname::parse("Jos\u{E9}", &limits()).unwrap();
        assert_eq!(decomposed, precomposed);
        assert_eq!(decomposed.as_str(), "Jos\u{E9}");
        assert_eq!(
            RoomTitle::parse(" cafe\u{301} ", &limits())
                .unwrap()
                .as_str(),
            "caf\u{E9}"
        );
        assert_eq!(
            MessageContent::parse("n\u{303}", &limits())
                .unwrap()
                .as_str(),
            "\u{F1}"
        );
        // Hangul jamo compose into syllables.
        assert_eq!(
            Nickname::parse("\u{1100}\u{1161}", &limits())
                .unwrap()
                .as_str(),
            "\u{AC00}"
        );
        // NFC, not NFKC: compatibility characters stay distinct.
        assert_eq!(
            Nickname::parse("\u{FB01}le", &limits()).unwrap().as_str(),
            "\u{FB01}le"
        );
    }

    #[test]
    fn lengths_count_after_normalization() {
        let tight = TextLimits {
            title: 5,
            nickname: 5,
            content: 5,
        };
        // Ten scalar values as written, five once composed.
        let decomposed = "e\u{301}".repeat(5);
        assert_eq!(
            Nickname::parse(&decomposed, &tight).unwrap().as_str(),
            "\u{E9}".repeat(5)
        );
        assert!(RoomTitle::parse(&decomposed, &tight).is_ok());
        assert!(MessageContent::parse(&decomposed, &tight).is_ok());
        // U+FB2C is one scalar value whose NFC is three.
        let err = Nickname::parse(&"\u{FB2C}".repeat(2), &tight).unwrap_err();
        assert!(err.to_string().contains("got 6"), "{err}");
    }

    /// Every Cf character, found through the crate (no table of our own).
    fn all_format_chars() -> Vec<char> {
        let all: Vec<char> = (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|c| is_format(*c))
            .collect();
        assert!(all.len() > 150, "only {} Cf characters?", all.len());
        all
    }

    /// Strings rich in what normalization changes: combining marks in
    /// every order, Hangul jamo, precomposed letters, singletons, whitespace,
    /// controls and format characters, beside arbitrary characters.
    fn tricky_text() -> impl Strategy<Value = String> {
        let tricky = prop::sample::select(vec![
            'a', 'e', 'o', 'E', ' ', '\t', '\n', '\u{A0}', '\u{3000}', '\u{300}', '\u{301}',
            '\u{302}', '\u{308}', '\u{323}', '\u{327}', '\u{334}', '\u{345}', '\u{E9}', '\u{1E69}',
            '\u{212B}', '\u{2126}', '\u{1100}', '\u{1161}', '\u{11A8}', '\u{AC00}', '\u{FB2C}',
            '\u{958}', '\u{200B}', '\u{200D}', '\u{202E}', '\u{FEFF}', '\u{AD}', '\u{7}',
        ]);
        prop::collection::vec(prop_oneof![3 => tricky, 1 => any::<char>()], 0..24)
            .prop_map(|cs| cs.into_iter().collect())
    }

    fn wide() -> TextLimits {
        TextLimits {
            title: 10_000,
            nickname: 10_000,
            content: 10_000,
        }
    }

    proptest! {
        /// The quick path (text already NFC kept as is) gives exactly what
        /// normalizing every text gives.
        #[test]
        fn the_quick_nfc_path_equals_full_normalization(text in tricky_text()) {
            let full: String = text.nfc().collect();
            let quick = nfc(&text);
            prop_assert_eq!(quick.as_ref(), full.as_str());
            let ascii: String = text.chars().filter(char::is_ascii).collect();
            prop_assert!(matches!(nfc(&ascii), Cow::Borrowed(_)), "ASCII is never copied");
        }

        #[test]
        fn any_text_with_a_format_char_is_refused_as_nickname_or_title(
            before in "\\PC{0,20}",
            cf in prop::sample::select(all_format_chars()),
            after in "\\PC{0,20}",
        ) {
            let text = format!("{before}{cf}{after}");
            let err = Nickname::parse(&text, &wide()).unwrap_err();
            prop_assert_eq!(err.code(), "invalid_nickname");
            prop_assert!(err.to_string().contains("format"), "{}", err);
            let err = RoomTitle::parse(&text, &wide()).unwrap_err();
            prop_assert_eq!(err.code(), "invalid_title");
            prop_assert!(err.to_string().contains("format"), "{}", err);
            // Content keeps it, through normalization.
            let content = MessageContent::parse(&text, &wide()).unwrap();
            prop_assert!(content.as_str().contains(cf));
        }

        #[test]
        fn parse_is_idempotent(raw in tricky_text(), max in 1usize..12) {
            let limits = TextLimits { title: max, nickname: max, content: max };
            if let Ok(t) = RoomTitle::parse(&raw, &limits) {
                prop_assert_eq!(RoomTitle::parse(t.as_str(), &limits).unwrap(), t);
            }
            if let Ok(n) = Nickname::parse(&raw, &limits) {
                prop_assert!(unicode_normalization::is_nfc(n.as_str()));
                prop_assert_eq!(Nickname::parse(n.as_str(), &limits).unwrap(), n);
            }
            if let Ok(c) = MessageContent::parse(&raw, &limits) {
                prop_assert_eq!(MessageContent::parse(c.as_str(), &limits).unwrap(), c);
            }
        }

        #[test]
        fn canonically_equivalent_inputs_give_equal_values(
            raw in tricky_text(),
            max in 1usize..12,
        ) {
            let limits = TextLimits { title: max, nickname: max, content: max };
            let nfd: String = raw.nfd().collect();
            let nfc: String = raw.nfc().collect();
            for spelling in [&nfd, &nfc] {
                prop_assert_eq!(
                    Nickname::parse(spelling, &limits).ok(),
                    Nickname::parse(&raw, &limits).ok()
                );
                prop_assert_eq!(
                    RoomTitle::parse(spelling, &limits).ok(),
                    RoomTitle::parse(&raw, &limits).ok()
                );
                prop_assert_eq!(
                    MessageContent::parse(spelling, &limits).ok(),
                    MessageContent::parse(&raw, &limits).ok()
                );
            }
        }
    }
}
