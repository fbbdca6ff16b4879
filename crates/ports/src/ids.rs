//! Validated identities. Domains and roots become storage keys in every adapter, so they are
//! checked once, here, and no adapter has to escape or re-validate them.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Why a domain or root was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The domain is empty, too long, or has a character outside `[A-Za-z0-9_.-]`.
    #[error(
        "invalid domain {0:?}: use 1 to {max} characters of [A-Za-z0-9_.-], starting with a letter or digit",
        max = Domain::MAX_LEN
    )]
    InvalidDomain(String),
    /// The root is not a UUID.
    #[error("invalid root {0:?}: expected a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8")]
    InvalidRoot(String),
    /// The root is the nil UUID, which is almost always an unset field.
    #[error("the nil UUID is not a valid root")]
    NilRoot,
}

/// Whether `byte` is one of `[A-Za-z0-9_.-]`, the characters of every name angzarr puts into
/// a storage key (domains, and the stores' prefixes and namespaces): none of them separates key
/// parts, opens a hash tag or needs quoting in any store.
pub fn is_key_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-')
}

/// Whether `name` is of [`is_key_char`]s only, and as long as `lengths` allows.
pub fn is_key_name(name: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&name.len()) && name.bytes().all(is_key_char)
}

/// The name of an aggregate type, such as `account`.
///
/// 1 to [`Domain::MAX_LEN`] characters of `[A-Za-z0-9_.-]`, starting with a letter or digit.
/// That excludes every separator a store uses in its keys (`:`, `#`, `/`, `{`, whitespace...),
/// so a domain can never collide with another domain's or aggregate's keys.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain(String);

impl Domain {
    /// The longest domain name accepted.
    pub const MAX_LEN: usize = 64;

    /// Validates `name` as a domain.
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        let valid = name
            .bytes()
            .next()
            .is_some_and(|first| first.is_ascii_alphanumeric())
            && is_key_name(&name, 1..=Self::MAX_LEN);
        if valid {
            Ok(Self(name))
        } else {
            Err(IdError::InvalidDomain(name))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Domain {
    type Err = IdError;
    fn from_str(name: &str) -> Result<Self, IdError> {
        Self::new(name)
    }
}

impl AsRef<str> for Domain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// One aggregate instance: a domain and a non-nil root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AggregateId {
    domain: Domain,
    root: Uuid,
}

impl AggregateId {
    /// Combines a domain and a root; the nil UUID is refused.
    pub fn new(domain: Domain, root: Uuid) -> Result<Self, IdError> {
        if root.is_nil() {
            return Err(IdError::NilRoot);
        }
        Ok(Self { domain, root })
    }

    /// Parses the text form used on the wire (`Cover.domain`, `Cover.root`).
    pub fn parse(domain: &str, root: &str) -> Result<Self, IdError> {
        let root = Uuid::try_parse(root).map_err(|_| IdError::InvalidRoot(root.to_owned()))?;
        Self::new(Domain::new(domain)?, root)
    }

    /// The aggregate type.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The aggregate instance.
    pub fn root(&self) -> Uuid {
        self.root
    }
}

impl fmt::Display for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.root)
    }
}

impl fmt::Debug for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_that_could_collide_in_keys_are_refused() {
        for bad in [
            "",
            "a:b",
            "a#b",
            "a/b",
            "{a}",
            "a b",
            "_a",
            ".a",
            "é",
            &"a".repeat(65),
        ] {
            assert!(Domain::new(bad).is_err(), "{bad:?} was accepted");
        }
        for good in [
            "a",
            "Account",
            "bank.account",
            "a_b",
            "a-b",
            "9",
            &"a".repeat(64),
        ] {
            assert_eq!(
                Domain::new(good).map(|d| d.to_string()),
                Ok(good.to_owned())
            );
        }
    }

    #[test]
    fn nil_and_malformed_roots_are_refused() {
        assert_eq!(
            AggregateId::parse("a", &Uuid::nil().to_string()),
            Err(IdError::NilRoot)
        );
        assert!(matches!(
            AggregateId::parse("a", "42"),
            Err(IdError::InvalidRoot(_))
        ));
        let root = Uuid::new_v4();
        let id = AggregateId::parse("a", &root.to_string()).unwrap();
        assert_eq!((id.domain().as_str(), id.root()), ("a", root));
    }
}
