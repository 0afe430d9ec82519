//! Validated identifiers and labels. A value of these types is always valid,
//! so code past the HTTP boundary never re-checks ids.

use std::fmt;
use std::sync::Arc;

/// The longest id or label we accept, in characters.
pub const MAX_ID_LEN: usize = 128;

/// Why a string was refused as an id or label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_LEN} characters")]
    TooLong,
    #[error("may contain only A-Z a-z 0-9 and . _ ~ : @ -")]
    BadChar,
}

fn check_id(s: &str) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty);
    }
    // Every accepted character is ASCII, so bytes == characters here.
    if s.len() > MAX_ID_LEN {
        return Err(InvalidId::TooLong);
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'@' | b'-');
    if s.bytes().all(ok) { Ok(()) } else { Err(InvalidId::BadChar) }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s`: 1 to 128 characters of `[A-Za-z0-9._~:@-]`.
            pub fn new(s: &str) -> Result<Self, InvalidId> {
                check_id(s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}

id_type!(
    /// The account whose streams are limited.
    UserId
);
id_type!(
    /// One playback stream of a user; the unit that holds a lease.
    StreamId
);
id_type!(
    /// Who holds a lease: an opaque token that the instance holding a
    /// player's socket gives that socket. The rules only compare it.
    Holder
);

/// Free-form metadata carried on a lease (`device_id`, `content_id`):
/// any text of at most 128 characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(Arc<str>);

impl Label {
    pub fn new(s: &str) -> Result<Self, InvalidId> {
        if s.chars().count() > MAX_ID_LEN {
            return Err(InvalidId::TooLong);
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A label that rules compare (a device class, a content kind, a rule
    /// name): validated as an id is, 1 to 128 characters of
    /// `[A-Za-z0-9._~:@-]`.
    pub fn id(s: &str) -> Result<Self, InvalidId> {
        check_id(s)?;
        Ok(Self(Arc::from(s)))
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_alphabet() {
        assert!(UserId::new("a").is_ok());
        assert!(UserId::new("Az09._~:@-").is_ok());
        assert!(StreamId::new(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn ids_reject_everything_else() {
        assert_eq!(UserId::new(""), Err(InvalidId::Empty));
        assert_eq!(UserId::new(&"x".repeat(129)), Err(InvalidId::TooLong));
        for bad in ["a b", "a/b", "é", "a%2F", "a\0", "a+b", "a#"] {
            assert_eq!(StreamId::new(bad), Err(InvalidId::BadChar), "{bad:?}");
        }
    }

    #[test]
    fn labels_count_characters_not_bytes() {
        assert!(Label::new(&"é".repeat(128)).is_ok());
        assert_eq!(Label::new(&"é".repeat(129)), Err(InvalidId::TooLong));
        assert!(Label::new("").is_ok());
    }
}
