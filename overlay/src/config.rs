//! The daemon's configuration file (TOML), checked field by field so that
//! a mistake is reported with the file, the field and what is wrong.
//!
//! ```toml
//! private_key_file = "overlay.key"      # or: private_key = "<base64>"
//! listen = "198.18.0.1:51820"
//! tunnel_address = "198.19.255.1"
//! endpoint = "198.18.0.1:51820"         # how others reach this node (export-gateway)
//! control_socket = "/run/slicenet/overlay.sock"
//!
//! [[peer]]
//! name = "site2"
//! public_key = "<base64>"
//! endpoint = "198.18.0.2:51820"
//! tunnel_address = "198.19.255.2"
//!
//! [[enclave]]
//! vni = 42
//! members = ["site2"]                   # peer names or public keys
//!
//! [[enclave.port]]
//! name = "vm1"
//! kind = "tap"
//! ifname = "tap42"
//! address = "198.19.42.1/24"
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::keys::{PrivateKey, PublicKey};
use crate::overlay::{OverlayConfig, PeerConfig, PortConfig, PortKind, MAX_MTU, MIN_MTU};
use crate::wire::ethernet::MacAddr;
use crate::wire::vxlan::MAX_VNI;

/// Where the daemon listens for `slicenet overlay status` when the file
/// does not say.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/slicenet/overlay.sock";

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or a field has the wrong type or name.
    #[error("config file {file}: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message: line, column, field and problem.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("config file {file}: field `{field}`: {problem}")]
    Field {
        /// The file.
        file: PathBuf,
        /// Path of the field, e.g. `enclave[0].port[1].mac`.
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// An IPv4 address with a prefix length, like `198.19.42.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length (0..=32).
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not ADDRESS/PREFIX, like 198.19.42.1/24"))?;
        let addr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
        let prefix = p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`{p}` is not a prefix length (0..=32)"))?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    private_key: Option<String>,
    private_key_file: Option<PathBuf>,
    listen: SocketAddr,
    tunnel_address: Ipv4Addr,
    endpoint: Option<SocketAddr>,
    control_socket: Option<PathBuf>,
    underlay_mtu: Option<u16>,
    mac_aging_secs: Option<u64>,
    handshake_rate_limit: Option<u64>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    #[serde(default)]
    enclave: Vec<RawEnclave>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Option<String>,
    public_key: PublicKey,
    endpoint: Option<SocketAddr>,
    tunnel_address: Ipv4Addr,
    persistent_keepalive: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnclave {
    vni: u32,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    port: Vec<RawPort>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Tap,
    Unix,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    name: String,
    kind: RawKind,
    ifname: Option<String>,
    address: Option<Ipv4Cidr>,
    offload: Option<bool>,
    switch_sock: Option<PathBuf>,
    vm_sock: Option<PathBuf>,
    mac: Option<MacAddr>,
    mtu: Option<u16>,
    anti_spoof: Option<bool>,
}

/// One enclave of the file: VNI, members and local ports.
#[derive(Debug, Clone)]
pub struct EnclaveConfig {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Member peers' keys.
    pub members: Vec<PublicKey>,
    /// Local ports.
    pub ports: Vec<PortConfig>,
}

/// A checked daemon configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// Data plane settings.
    pub overlay: OverlayConfig,
    /// How other hosts reach this node (defaults to `listen` when that is
    /// a concrete address).
    pub endpoint: Option<SocketAddr>,
    /// Unix socket of the status command.
    pub control_socket: PathBuf,
    /// Peers.
    pub peers: Vec<PeerConfig>,
    /// Enclaves.
    pub enclaves: Vec<EnclaveConfig>,
}

impl DaemonConfig {
    /// Reads and checks a configuration file. Relative paths in it are
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks configuration text that came from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<DaemonConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().replace("TOML parse error at ", ""),
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        let fail = |field: &str, problem: String| ConfigError::Field {
            file: file.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        let private_key = match (&raw.private_key, &raw.private_key_file) {
            (Some(k), None) => {
                PrivateKey::from_base64(k).map_err(|e| fail("private_key", e.to_string()))?
            }
            (None, Some(f)) => PrivateKey::load(&base.join(f))
                .map_err(|e| fail("private_key_file", e.to_string()))?,
            (Some(_), Some(_)) => {
                return Err(fail(
                    "private_key",
                    "give either private_key or private_key_file, not both".into(),
                ))
            }
            (None, None) => return Err(fail(
                "private_key_file",
                "missing: name a key file (create one with `slicenet overlay keygen --out FILE`)"
                    .into(),
            )),
        };
        let mut overlay = OverlayConfig::new(private_key, raw.listen, raw.tunnel_address);
        if let Some(mtu) = raw.underlay_mtu {
            if !(576..=65_535).contains(&mtu) {
                return Err(fail(
                    "underlay_mtu",
                    format!("{mtu} is not a usable MTU (576..)"),
                ));
            }
            overlay.underlay_mtu = mtu;
        }
        if let Some(s) = raw.mac_aging_secs {
            if s == 0 {
                return Err(fail("mac_aging_secs", "must be at least 1".into()));
            }
            overlay.mac_aging = Duration::from_secs(s);
        }
        if let Some(n) = raw.handshake_rate_limit {
            if n == 0 {
                return Err(fail("handshake_rate_limit", "must be at least 1".into()));
            }
            overlay.handshake_rate_limit = n;
        }
        let own = overlay.private_key.public_key();
        let mut peers = Vec::new();
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for (i, p) in raw.peer.iter().enumerate() {
            let field = |f: &str| format!("peer[{i}].{f}");
            if p.public_key == own {
                return Err(fail(&field("public_key"), "is this node's own key".into()));
            }
            if !keys.insert(p.public_key) {
                return Err(fail(&field("public_key"), "appears twice".into()));
            }
            if p.tunnel_address == raw.tunnel_address {
                return Err(fail(
                    &field("tunnel_address"),
                    format!("{} is this node's own tunnel address", p.tunnel_address),
                ));
            }
            let name = p.name.clone().unwrap_or_else(|| p.public_key.short());
            if !names.insert(name.clone()) {
                return Err(fail(
                    &field("name"),
                    format!("`{name}` is used by another peer"),
                ));
            }
            peers.push(PeerConfig {
                public_key: p.public_key,
                name: Some(name),
                endpoint: p.endpoint,
                tunnel_address: p.tunnel_address,
                persistent_keepalive: p.persistent_keepalive,
            });
        }
        let mut enclaves = Vec::new();
        let mut vnis = HashSet::new();
        let mut port_names = HashSet::new();
        for (i, e) in raw.enclave.iter().enumerate() {
            let field = |f: &str| format!("enclave[{i}].{f}");
            if e.vni > MAX_VNI {
                return Err(fail(
                    &field("vni"),
                    format!("{} does not fit in 24 bits (0..=16777215)", e.vni),
                ));
            }
            if !vnis.insert(e.vni) {
                return Err(fail(
                    &field("vni"),
                    format!("enclave {} appears twice", e.vni),
                ));
            }
            let mut members = Vec::new();
            for (j, m) in e.members.iter().enumerate() {
                let found = peers.iter().find(|p| {
                    p.name.as_deref() == Some(m.as_str()) || p.public_key.to_base64() == *m
                });
                match found {
                    Some(p) => members.push(p.public_key),
                    None => {
                        let known: Vec<&str> =
                            peers.iter().filter_map(|p| p.name.as_deref()).collect();
                        return Err(fail(
                            &field(&format!("members[{j}]")),
                            format!(
                                "no peer is named or keyed `{m}` (peers: {})",
                                if known.is_empty() {
                                    "none".into()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        ));
                    }
                }
            }
            let mut ports = Vec::new();
            for (j, p) in e.port.iter().enumerate() {
                let pf = |f: &str| field(&format!("port[{j}].{f}"));
                if !port_names.insert(p.name.clone()) {
                    return Err(fail(
                        &pf("name"),
                        format!("`{}` is used by another port", p.name),
                    ));
                }
                if let Some(mtu) = p.mtu {
                    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                        return Err(fail(
                            &pf("mtu"),
                            format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}"),
                        ));
                    }
                }
                if let Some(mac) = p.mac {
                    if mac.is_multicast() || mac.is_zero() {
                        return Err(fail(&pf("mac"), format!("{mac} is not a unicast address")));
                    }
                }
                let anti_spoof = p.anti_spoof.unwrap_or(true);
                let kind = match p.kind {
                    RawKind::Tap => {
                        if p.switch_sock.is_some() || p.vm_sock.is_some() {
                            return Err(fail(
                                &pf("kind"),
                                "a tap port has ifname, not switch_sock/vm_sock".into(),
                            ));
                        }
                        let ifname = p.ifname.clone().unwrap_or_else(|| p.name.clone());
                        if ifname.is_empty() || ifname.len() > 15 {
                            return Err(fail(
                                &pf("ifname"),
                                format!("`{ifname}` must have 1 to 15 characters"),
                            ));
                        }
                        PortKind::Tap {
                            ifname,
                            offload: p.offload.unwrap_or(true),
                            address: p.address.map(|c| (c.addr, c.prefix)),
                        }
                    }
                    RawKind::Unix => {
                        let (Some(s), Some(v)) = (&p.switch_sock, &p.vm_sock) else {
                            return Err(fail(
                                &pf("switch_sock"),
                                "a unix port needs both switch_sock and vm_sock".into(),
                            ));
                        };
                        if p.ifname.is_some() || p.address.is_some() || p.offload.is_some() {
                            return Err(fail(
                                &pf("kind"),
                                "ifname, address and offload apply to tap ports only".into(),
                            ));
                        }
                        if anti_spoof && p.mac.is_none() {
                            return Err(fail(
                                &pf("mac"),
                                "missing: a unix port needs its VM NIC's MAC (or anti_spoof = false)".into(),
                            ));
                        }
                        PortKind::UnixDgram {
                            switch_sock: base.join(s),
                            vm_sock: base.join(v),
                        }
                    }
                };
                ports.push(PortConfig {
                    name: p.name.clone(),
                    vni: e.vni,
                    kind,
                    mac: p.mac,
                    mtu: p.mtu,
                    anti_spoof,
                });
            }
            enclaves.push(EnclaveConfig {
                vni: e.vni,
                members,
                ports,
            });
        }
        let endpoint = raw
            .endpoint
            .or((!raw.listen.ip().is_unspecified()).then_some(raw.listen));
        Ok(DaemonConfig {
            file: file.to_path_buf(),
            overlay,
            endpoint,
            control_socket: raw
                .control_socket
                .map(|p| base.join(p))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            peers,
            enclaves,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> String {
        let key = PrivateKey::generate();
        let peer = PrivateKey::generate().public_key();
        format!(
            r#"
private_key = "{}"
listen = "198.18.0.1:51820"
tunnel_address = "198.19.255.1"
control_socket = "ctl.sock"

[[peer]]
name = "site2"
public_key = "{peer}"
endpoint = "198.18.0.2:51820"
tunnel_address = "198.19.255.2"

[[enclave]]
vni = 42
members = ["site2"]

[[enclave.port]]
name = "vm1"
kind = "tap"
ifname = "tap42"
address = "198.19.42.1/24"

[[enclave.port]]
name = "vm2"
kind = "unix"
switch_sock = "vm2.switch.sock"
vm_sock = "vm2.vm.sock"
mac = "02:00:00:00:00:02"
"#,
            key.to_base64()
        )
    }

    fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
        DaemonConfig::parse(text, Path::new("/etc/slicenet/overlay.toml"))
    }

    #[test]
    fn a_complete_file_parses() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.enclaves[0].members, vec![c.peers[0].public_key]);
        assert_eq!(c.enclaves[0].ports.len(), 2);
        assert_eq!(c.control_socket, PathBuf::from("/etc/slicenet/ctl.sock"));
        assert_eq!(c.endpoint, Some("198.18.0.1:51820".parse().unwrap()));
        match &c.enclaves[0].ports[1].kind {
            PortKind::UnixDgram { vm_sock, .. } => {
                assert_eq!(vm_sock, Path::new("/etc/slicenet/vm2.vm.sock"))
            }
            other => panic!("{other:?}"),
        }
    }

    /// Each broken file must fail naming the file and the field.
    #[test]
    fn mistakes_name_the_file_the_field_and_the_problem() {
        let cases: Vec<(String, &str)> = vec![
            (good().replace("listen =", "listn ="), "listn"),
            (
                good().replace("198.19.255.2\"", "198.19.255\""),
                "tunnel_address",
            ),
            (
                good().replace("members = [\"site2\"]", "members = [\"site3\"]"),
                "enclave[0].members[0]",
            ),
            (
                good().replace("vni = 42", "vni = 16777216"),
                "enclave[0].vni",
            ),
            (
                good().replace("02:00:00:00:00:02", "01:00:00:00:00:02"),
                "enclave[0].port[1].mac",
            ),
            (
                good().replace("mac = \"02:00:00:00:00:02\"", ""),
                "enclave[0].port[1].mac",
            ),
            (
                good().replace("ifname = \"tap42\"", "ifname = \"a-very-long-interface\""),
                "enclave[0].port[0].ifname",
            ),
            (good().replace("kind = \"tap\"", "kind = \"tun\""), "kind"),
            (good().replace("/24", "/33"), "address"),
        ];
        for (text, field) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("/etc/slicenet/overlay.toml"), "{err}");
            assert!(err.contains(field), "expected `{field}` in: {err}");
        }
        let err = parse(&good().replace("public_key = \"", "public_key = \"x")).unwrap_err();
        assert!(err.to_string().contains("public_key"), "{err}");
        assert!(err.to_string().contains("base64"), "{err}");
    }
}
