//! The node daemon's configuration file (TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::runtime::RuntimeKind;

/// Errors reading the configuration, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read node configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or a field has the wrong type.
    #[error("node configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A field's value is not acceptable.
    #[error("node configuration {path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// Where the node is, for its membership record.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Site name as registered at the authority.
    pub name: String,
    /// Region (e.g. `eu`).
    pub region: String,
    #[serde(default)]
    pub latitude: f64,
    #[serde(default)]
    pub longitude: f64,
}

/// How to reach and trust the authority.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// Base URL, e.g. `http://198.18.0.1:8420`.
    pub url: String,
    /// The authority's ticket-signing public key (base64, its
    /// `authority.pub`), pinned: only tickets it signed are obeyed.
    pub public_key: String,
}

/// libp2p membership settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MembershipSection {
    /// TCP address the membership endpoint listens on.
    pub listen: SocketAddr,
    /// Addresses of a few existing nodes to join through.
    #[serde(default)]
    pub bootstrap: Vec<SocketAddr>,
}

/// Data-plane settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverlaySection {
    /// UDP address of the node's one WireGuard socket.
    pub listen: SocketAddr,
    /// Address other nodes send to, when it differs from `listen`
    /// (e.g. `listen = 0.0.0.0:51820`).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
}

/// What to do when a sliver's VM ends on its own.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Start it again (with back-off), unless it fails too often.
    #[default]
    OnFailure,
    /// Leave it stopped and report it.
    Never,
}

/// Sliver runtime settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// `microvm` or `qemu`; absent = pick what works here.
    #[serde(default)]
    pub kind: Option<RuntimeKind>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Restarts allowed within ten minutes before a sliver is left failed.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
}

fn default_max_restarts() -> u32 {
    5
}

/// Capacity offered to the authority (defaults: what the host has, minus
/// a reserve for the node itself).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CapacitySection {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    pub disk_gib: Option<u32>,
}

/// The port of a node's remote console listener unless `[console]` says otherwise.
pub const DEFAULT_CONSOLE_PORT: u16 = 7010;

/// The remote console listener (`slicenet console SLICE SLIVER`): where
/// clients present console grants.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// `false` turns the remote console off: the node registers no console
    /// address and the authority issues no grants for its slivers.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// TCP address to listen on; default: the overlay's listen address
    /// with port 7010 ([`DEFAULT_CONSOLE_PORT`]).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Address clients connect to, when it differs from `listen`
    /// (e.g. `listen = 0.0.0.0:7010`, or behind NAT).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// Console connections open at once (handshakes included); more are
    /// refused with a "busy" answer.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        ConsoleSection {
            enabled: true,
            listen: None,
            advertise: None,
            max_sessions: default_max_sessions(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_sessions() -> usize {
    16
}

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name as registered at the authority.
    pub name: String,
    /// Keys, cached tickets and sliver state live here.
    pub data_dir: PathBuf,
    /// Directories searched for appliances (each holding appliance
    /// directories with an `appliance.toml`).
    #[serde(default)]
    pub appliance_dirs: Vec<PathBuf>,
    pub site: SiteConfig,
    pub authority: AuthorityConfig,
    pub membership: MembershipSection,
    pub overlay: OverlaySection,
    #[serde(default)]
    pub runtime: RuntimeSection,
    #[serde(default)]
    pub capacity: CapacitySection,
    #[serde(default)]
    pub console: ConsoleSection,
}

impl NodeConfig {
    /// Reads and checks a configuration file. Relative paths are taken
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        for dir in &mut config.appliance_dirs {
            *dir = base.join(&*dir);
        }
        Ok(config)
    }

    /// Parses configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |field, message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message: message.to_string(),
        };
        let name_ok = !config.name.is_empty()
            && config.name.len() <= 63
            && config
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(invalid(
                "name",
                "must be 1-63 letters, digits, '-' or '_' (the name the authority knows)",
            ));
        }
        if !config.authority.url.starts_with("http://")
            && !config.authority.url.starts_with("https://")
        {
            return Err(invalid(
                "authority.url",
                "must start with http:// or https://",
            ));
        }
        if config
            .authority
            .public_key
            .parse::<slicenet_authority::keys::PublicKey>()
            .is_err()
        {
            return Err(invalid(
                "authority.public_key",
                "must be the authority's base64 ed25519 public key (its authority.pub file)",
            ));
        }
        if !(-90.0..=90.0).contains(&config.site.latitude)
            || !(-180.0..=180.0).contains(&config.site.longitude)
        {
            return Err(invalid(
                "site.latitude",
                "latitude/longitude are outside the globe",
            ));
        }
        if config.overlay.listen.port() == 0 && config.overlay.advertise.is_none() {
            return Err(invalid(
                "overlay.listen",
                "needs a fixed port (other nodes must know where to send)",
            ));
        }
        if let Some(listen) = config.console_listen() {
            if config.console.advertise.is_none()
                && listen.ip().is_unspecified()
                && config.advertised_endpoint().ip().is_unspecified()
            {
                return Err(invalid(
                    "console.advertise",
                    "the console listens on a wildcard address: set `[console] advertise` (or \
                     `[overlay] advertise`) to the address clients reach, or `[console] enabled = false`",
                ));
            }
        }
        if config.console.enabled && config.console.max_sessions == 0 {
            return Err(invalid(
                "console.max_sessions",
                "must be at least 1 (set `enabled = false` to turn the remote console off)",
            ));
        }
        Ok(config)
    }

    /// The UDP endpoint other nodes should send to.
    pub fn advertised_endpoint(&self) -> SocketAddr {
        self.overlay.advertise.unwrap_or(self.overlay.listen)
    }

    /// Where the remote console listens, when it is enabled: `[console]
    /// listen`, else the overlay's listen address on port 7010.
    pub fn console_listen(&self) -> Option<SocketAddr> {
        if !self.console.enabled {
            return None;
        }
        Some(
            self.console
                .listen
                .unwrap_or_else(|| SocketAddr::new(self.overlay.listen.ip(), DEFAULT_CONSOLE_PORT)),
        )
    }

    /// The console address to register with the authority, given the
    /// address the listener actually bound (its port may have been 0):
    /// `[console] advertise`, else the bound address — with the overlay's
    /// advertised IP in place of an unspecified one (`0.0.0.0`).
    pub fn console_advertised(&self, bound: SocketAddr) -> SocketAddr {
        if let Some(a) = self.console.advertise {
            return a;
        }
        if bound.ip().is_unspecified() {
            SocketAddr::new(self.advertised_endpoint().ip(), bound.port())
        } else {
            bound
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let key = slicenet_authority::keys::PublicKey::of(&slicenet_authority::keys::generate())
            .to_string();
        format!(
            r#"
name = "ams-n1"
data_dir = "state"
appliance_dirs = ["appliances"]
[site]
name = "ams"
region = "eu"
latitude = 52.37
longitude = 4.9
[authority]
url = "http://198.18.0.1:8420"
public_key = "{key}"
[membership]
listen = "198.18.0.1:7946"
bootstrap = ["198.18.0.2:7946"]
[overlay]
listen = "198.18.0.1:51820"
[runtime]
kind = "qemu"
"#
        )
    }

    #[test]
    fn a_complete_file_parses_with_defaults() {
        let c = NodeConfig::parse(&sample(), Path::new("node.toml")).unwrap();
        assert_eq!(c.name, "ams-n1");
        assert_eq!(c.runtime.kind, Some(RuntimeKind::Qemu));
        assert_eq!(c.runtime.restart, RestartPolicy::OnFailure);
        assert_eq!(c.runtime.max_restarts, 5);
        assert_eq!(c.advertised_endpoint().port(), 51820);
        assert_eq!(
            c.console_listen(),
            Some("198.18.0.1:7010".parse().unwrap()),
            "the remote console defaults to the underlay address, port 7010"
        );
    }

    #[test]
    fn the_console_section_moves_or_disables_the_remote_console() {
        let off = sample() + "\n[console]\nenabled = false\n";
        let c = NodeConfig::parse(&off, Path::new("n.toml")).unwrap();
        assert_eq!(c.console_listen(), None);

        let wildcard = sample().replace(
            "[overlay]\nlisten = \"198.18.0.1:51820\"",
            "[overlay]\nlisten = \"0.0.0.0:51820\"\nadvertise = \"203.0.113.7:51820\"",
        ) + "\n[console]\nlisten = \"0.0.0.0:7100\"\nmax_sessions = 2\n";
        let c = NodeConfig::parse(&wildcard, Path::new("n.toml")).unwrap();
        let bound = c.console_listen().unwrap();
        assert_eq!(bound, "0.0.0.0:7100".parse().unwrap());
        assert_eq!(
            c.console_advertised(bound),
            "203.0.113.7:7100".parse().unwrap(),
            "a wildcard listener is advertised on the overlay's advertised address"
        );
        assert_eq!(c.console.max_sessions, 2);

        let explicit = sample() + "\n[console]\nadvertise = \"192.0.2.1:443\"\n";
        let c = NodeConfig::parse(&explicit, Path::new("n.toml")).unwrap();
        assert_eq!(
            c.console_advertised("198.18.0.1:7010".parse().unwrap()),
            "192.0.2.1:443".parse().unwrap()
        );

        let nowhere = sample() + "\n[console]\nlisten = \"0.0.0.0:7010\"\n";
        let nowhere = nowhere.replace(
            "listen = \"198.18.0.1:51820\"",
            "listen = \"0.0.0.0:51820\"",
        );
        let err = NodeConfig::parse(&nowhere, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("console.advertise"), "{err}");

        let none = sample() + "\n[console]\nmax_sessions = 0\n";
        let err = NodeConfig::parse(&none, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("console.max_sessions"), "{err}");
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let bad = sample().replace("http://198", "ftp://198");
        let err = NodeConfig::parse(&bad, Path::new("/etc/n.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/n.toml") && err.contains("authority.url"),
            "{err}"
        );
        let bad = sample().replace("kind = \"qemu\"", "kind = \"xen\"");
        let err = NodeConfig::parse(&bad, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("n.toml") && err.contains("xen"), "{err}");
        let bad = sample().replace("name = \"ams-n1\"", "name = \"a b\"");
        let err = NodeConfig::parse(&bad, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`name`"), "{err}");
        let bad = sample() + "\nsurprise = 1\n";
        let err = NodeConfig::parse(&bad, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("surprise"), "{err}");
    }
}
