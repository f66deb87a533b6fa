//! What an API key may do. The batcher stores a key's scopes in PostgreSQL (`api_keys.scopes`,
//! a text array) and the ingest API checks them on every route, so both must agree on the
//! names: they are defined here, once.
//!
//! Scopes are independent: `admin` does not imply `ingest` or `read`, so a key that erases
//! data cannot also write or read events unless it is given those scopes too.

use std::fmt;
use std::str::FromStr;

/// One permission of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Write events: `POST /v1/ai/events` and `POST /v1/ai/events/batch`.
    Ingest,
    /// The read API (`/v1/ai/stats/…`, `/v1/ai/sessions/…`), which the dashboard calls.
    Read,
    /// Operator routes on a tenant's data (erasure).
    Admin,
}

impl Scope {
    /// Every scope, in the order they are shown.
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

    /// The name stored in PostgreSQL and given on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Ingest => 1,
            Self::Read => 2,
            Self::Admin => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}: use ingest, read or admin")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| UnknownScope(text.to_owned()))
    }
}

/// A set of scopes: a key's, in a byte, so the key cache keeps it cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// What a key has unless it is created with other scopes, and what keys created before
    /// scopes existed have: ingest and read.
    pub const DEFAULT: Scopes = Scopes(1 | 2);

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in [`Scope::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The names, as stored in PostgreSQL.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }

    /// The set of stored names; an unknown name is an error (the table's CHECK keeps them
    /// out, so one here means the schema and the code disagree).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, UnknownScope> {
        names
            .iter()
            .map(|name| name.as_ref().parse::<Scope>())
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> Self {
        Scopes(scopes.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

impl fmt::Display for Scopes {
    /// Comma-separated names, as `key list` shows them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert_eq!(
            "write".parse::<Scope>(),
            Err(UnknownScope("write".to_owned()))
        );
        // Names are exact: what PostgreSQL stores is lowercase.
        assert!("Read".parse::<Scope>().is_err());
        assert!("".parse::<Scope>().is_err());
        assert_eq!(
            UnknownScope("x".into()).to_string(),
            "unknown scope \"x\": use ingest, read or admin"
        );
    }

    #[test]
    fn sets_hold_what_they_were_given() {
        assert_eq!(Scopes::DEFAULT.names(), ["ingest", "read"]);
        assert!(Scopes::DEFAULT.contains(Scope::Ingest));
        assert!(Scopes::DEFAULT.contains(Scope::Read));
        assert!(!Scopes::DEFAULT.contains(Scope::Admin));

        let admin = Scopes::from_names(&["admin"]).expect("known");
        assert!(admin.contains(Scope::Admin));
        assert!(!admin.contains(Scope::Ingest) && !admin.contains(Scope::Read));

        // Duplicates collapse; the order shown is always ingest, read, admin.
        let all = Scopes::from_names(&["admin", "read", "ingest", "read"]).expect("known");
        assert_eq!(all.to_string(), "ingest,read,admin");
        assert_eq!(all.iter().collect::<Vec<_>>(), Scope::ALL);

        assert!(Scopes::from_names::<&str>(&[]).expect("empty").is_empty());
        assert_eq!(
            Scopes::from_names(&["read", "delete"]),
            Err(UnknownScope("delete".into()))
        );
    }
}
