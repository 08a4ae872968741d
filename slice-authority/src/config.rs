//! The authority's configuration: policy lives here, not in code. Read from
//! `<data-dir>/authority.toml`, written with the defaults on first start.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Everything an operator may tune.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Lease of a slice whose request names none (seconds).
    pub default_lease_secs: u64,
    /// Longest lease create or renew grants (seconds); longer requests are capped and the reply says so.
    pub max_lease_secs: u64,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: usize,
    /// How far a request's timestamp may be from the authority's clock (seconds).
    pub clock_skew_secs: u64,
    /// A node not heard from for this long is "down" and placement avoids it (seconds).
    pub node_liveness_secs: u64,
    /// How often expired slices are reclaimed (milliseconds).
    pub reaper_interval_ms: u64,
    /// Longest wait of a ticket long poll (seconds).
    pub long_poll_max_secs: u64,
    /// Pool of node and gateway tunnel addresses, e.g. "198.19.255.0/24".
    pub tunnel_pool: String,
    /// Pool enclave subnets are carved from, e.g. "198.19.0.0/16".
    pub enclave_pool: String,
    /// Prefix length of an automatically assigned enclave subnet.
    pub enclave_prefix_len: u8,
    /// VNI of the first enclave; later ones count up.
    pub vni_base: u32,
    /// How long a console grant is valid (seconds, 10 to 3600): long enough to connect, short enough that a leaked one is soon useless.
    pub console_grant_secs: u64,
    /// SQLite `synchronous` setting: "full" survives power loss, "normal" only process crashes.
    pub synchronous: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8420)),
            default_lease_secs: 14 * 86_400,
            max_lease_secs: 56 * 86_400,
            max_body_bytes: 256 * 1024,
            clock_skew_secs: 300,
            node_liveness_secs: 120,
            reaper_interval_ms: 1000,
            long_poll_max_secs: 60,
            tunnel_pool: "198.19.255.0/24".into(),
            enclave_pool: "198.19.0.0/16".into(),
            enclave_prefix_len: 24,
            vni_base: 1000,
            console_grant_secs: 60,
            synchronous: "full".into(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("configuration file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse.
    #[error("configuration file {path} is invalid: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's words.
        reason: String,
    },
    /// A value is out of range.
    #[error("configuration value {key} is invalid: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// An IPv4 prefix like 198.19.255.0/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// Network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl Ipv4Net {
    /// Parses "a.b.c.d/len" and insists the host bits are zero.
    pub fn parse(s: &str) -> Result<Ipv4Net, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a prefix like 198.19.1.0/24"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not a prefix like 198.19.1.0/24"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0-32"))?;
        let net = Ipv4Net { addr, len };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(format!(
                "{s:?} has host bits set; write {}",
                Ipv4Net {
                    addr: Ipv4Addr::from(u32::from(addr) & net.mask()),
                    len
                }
            ));
        }
        Ok(net)
    }

    /// The netmask as an integer.
    pub fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        }
    }

    /// True when `ip` lies inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// True when the two prefixes share any address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// Usable host addresses in order (network and broadcast excluded for prefixes up to /30).
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.addr) as u64;
        let size = 1u64 << (32 - self.len as u64);
        let (first, last) = if size > 2 {
            (1, size - 2)
        } else {
            (0, size - 1)
        };
        (first..=last).map(move |i| Ipv4Addr::from((base + i) as u32))
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Config {
    /// Reads `path`, or writes the defaults there when it does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<Config, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        };
        let config = if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io)?;
            toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
        } else {
            let config = Config::default();
            let text = format!(
                "# slicenet authority configuration (written on first start; edit and restart).\n{}",
                toml::to_string(&config).expect("config serializes")
            );
            std::fs::write(path, text).map_err(io)?;
            config
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and pools.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.max_lease_secs == 0 || self.default_lease_secs == 0 {
            return invalid("max_lease_secs", "leases must be at least 1 second".into());
        }
        if self.default_lease_secs > self.max_lease_secs {
            return invalid(
                "default_lease_secs",
                format!(
                    "{} is above max_lease_secs {}",
                    self.default_lease_secs, self.max_lease_secs
                ),
            );
        }
        if self.vni_base == 0 || self.vni_base >= 1 << 24 {
            return invalid("vni_base", "must be 1..16777215".into());
        }
        let tunnel = self.tunnel_pool().map_err(|r| ConfigError::Invalid {
            key: "tunnel_pool",
            reason: r,
        })?;
        let enclaves = self.enclave_pool().map_err(|r| ConfigError::Invalid {
            key: "enclave_pool",
            reason: r,
        })?;
        if tunnel.len > 30 {
            return invalid("tunnel_pool", "needs at least a /30".into());
        }
        if self.enclave_prefix_len < enclaves.len || self.enclave_prefix_len > 30 {
            return invalid(
                "enclave_prefix_len",
                format!("must be between {} and 30", enclaves.len),
            );
        }
        if !(10..=crate::grant::MAX_GRANT_SECS as u64).contains(&self.console_grant_secs) {
            return invalid(
                "console_grant_secs",
                format!(
                    "{} is outside 10..={}",
                    self.console_grant_secs,
                    crate::grant::MAX_GRANT_SECS
                ),
            );
        }
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes", "at least 1024".into());
        }
        Ok(())
    }

    /// The tunnel address pool.
    pub fn tunnel_pool(&self) -> Result<Ipv4Net, String> {
        Ipv4Net::parse(&self.tunnel_pool)
    }

    /// The enclave subnet pool.
    pub fn enclave_pool(&self) -> Result<Ipv4Net, String> {
        Ipv4Net::parse(&self.enclave_pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_enumerate_hosts() {
        let net = Ipv4Net::parse("198.19.255.0/24").unwrap();
        assert!(net.contains("198.19.255.7".parse().unwrap()));
        assert!(!net.contains("198.19.254.7".parse().unwrap()));
        assert_eq!(net.hosts().count(), 254);
        assert_eq!(net.hosts().next(), Some("198.19.255.1".parse().unwrap()));
        assert!(Ipv4Net::parse("198.19.255.1/24")
            .unwrap_err()
            .contains("198.19.255.0/24"));
        assert!(Ipv4Net::parse("198.19.0.0/16").unwrap().overlaps(&net));
    }

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authority.toml");
        let created = Config::load_or_create(&path).unwrap();
        let loaded = Config::load_or_create(&path).unwrap();
        assert_eq!(created.max_lease_secs, loaded.max_lease_secs);
        std::fs::write(&path, "max_lease_secs = 10\ndefault_lease_secs = 20\n").unwrap();
        assert!(Config::load_or_create(&path).is_err());
        std::fs::write(&path, "console_grant_secs = 5\n").unwrap();
        assert!(Config::load_or_create(&path)
            .unwrap_err()
            .to_string()
            .contains("console_grant_secs"));
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(Config::load_or_create(&path).is_err());
    }
}
