//! The oldest Redis sift runs on, and the start-up check of it. sift's Lua scripts declare
//! themselves with a `#!lua` shebang (and flags such as `allow-oom`), which Redis 7.0
//! introduced: an older server refuses every script, so every request would fail while a
//! `PING` (readiness) still succeeds. Both binaries therefore read `redis_version` from
//! `INFO server` when they start and refuse an older server. A server that does not answer
//! at start-up is not waited for: the process starts as it always did, and answers 503 (or
//! retries) until Redis is back.

use std::fmt;

/// The oldest Redis version whose scripts sift's Lua code runs on.
pub const MINIMUM: RedisVersion = RedisVersion {
    major: 7,
    minor: 0,
    patch: 0,
};

/// A Redis server version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RedisVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl RedisVersion {
    /// Parses `7.0.15` (or `7.2`, or `7.4.0-rc1`: the numeric prefix of each part counts).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let mut number = |required: bool| -> Option<u32> {
            match parts.next() {
                Some(part) => {
                    let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                }
                None if required => None,
                None => Some(0),
            }
        };
        Some(Self {
            major: number(true)?,
            minor: number(true)?,
            patch: number(false)?,
        })
    }

    /// The `redis_version:` line of an `INFO server` reply.
    pub fn from_info(info: &str) -> Option<Self> {
        info.lines()
            .find_map(|line| line.trim().strip_prefix("redis_version:"))
            .and_then(Self::parse)
    }

    pub fn is_supported(self) -> bool {
        self >= MINIMUM
    }
}

impl fmt::Display for RedisVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why the start-up check refused a Redis server.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Redis server of shard {shard} is version {found}; sift needs Redis {MINIMUM} or later \
     (its Lua scripts use the `#!lua` shebang of Redis 7)"
)]
pub struct TooOld {
    pub shard: usize,
    pub found: RedisVersion,
}

/// What a Redis server said about its version.
#[derive(Debug)]
pub enum Probe {
    Version(RedisVersion),
    /// It answered `INFO server` without a readable `redis_version` line.
    Unreadable,
}

/// Asks the server behind `conn` for its version (`INFO server`).
pub async fn probe<C: redis::aio::ConnectionLike>(conn: &mut C) -> redis::RedisResult<Probe> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    Ok(RedisVersion::from_info(&info).map_or(Probe::Unreadable, Probe::Version))
}

/// The verdict on shard (or cluster node) `shard`'s answer to [`probe`]: an older server is refused; one that
/// did not answer, or not with its version, is logged and let through.
pub fn judge(shard: usize, answer: Result<Probe, String>) -> Result<(), TooOld> {
    match answer {
        Ok(Probe::Version(found)) if !found.is_supported() => Err(TooOld { shard, found }),
        Ok(Probe::Version(found)) => {
            tracing::debug!(shard, version = %found, "Redis version supported");
            Ok(())
        }
        Ok(Probe::Unreadable) => {
            tracing::warn!(
                shard,
                "Redis did not tell its version (INFO server has no redis_version); sift needs {MINIMUM} or later"
            );
            Ok(())
        }
        Err(error) => {
            tracing::warn!(shard, %error, "cannot read the Redis version; it is not checked");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> RedisVersion {
        RedisVersion {
            major,
            minor,
            patch,
        }
    }

    #[test]
    fn parses_versions() {
        assert_eq!(RedisVersion::parse("7.0.15"), Some(v(7, 0, 15)));
        assert_eq!(RedisVersion::parse("6.2.6"), Some(v(6, 2, 6)));
        assert_eq!(RedisVersion::parse("7.2"), Some(v(7, 2, 0)));
        assert_eq!(RedisVersion::parse("7.4.0-rc1"), Some(v(7, 4, 0)));
        assert_eq!(
            RedisVersion::parse(" 255.255.255\r"),
            Some(v(255, 255, 255))
        );
        assert_eq!(RedisVersion::parse("7"), None);
        assert_eq!(RedisVersion::parse(""), None);
        assert_eq!(RedisVersion::parse("seven.zero"), None);
    }

    #[test]
    fn reads_the_version_line_of_info_server() {
        let info = "# Server\r\nredis_version:6.2.14\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(RedisVersion::from_info(info), Some(v(6, 2, 14)));
        assert_eq!(
            RedisVersion::from_info("# Server\r\nredis_mode:standalone\r\n"),
            None
        );
    }

    #[test]
    fn seven_and_later_are_supported() {
        for (version, supported) in [
            ("6.2.14", false),
            ("6.9.9", false),
            ("5.0.7", false),
            ("7.0.0", true),
            ("7.0.15", true),
            ("7.4.2", true),
            ("8.0.0", true),
        ] {
            let parsed = RedisVersion::parse(version).expect(version);
            assert_eq!(parsed.is_supported(), supported, "{version}");
        }
    }

    #[test]
    fn the_refusal_names_the_version_and_the_minimum() {
        let message = TooOld {
            shard: 1,
            found: v(6, 2, 6),
        }
        .to_string();
        assert!(message.contains("shard 1"), "{message}");
        assert!(message.contains("6.2.6"), "{message}");
        assert!(message.contains("7.0.0 or later"), "{message}");
    }
}
