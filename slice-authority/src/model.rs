//! Plain domain values shared by the API, the registry and tickets:
//! resources, appliances, MAC addresses, and the rules for names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Resources of a node (its capacity) or of a sliver (its reservation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk in GiB.
    #[serde(default)]
    pub disk_gib: u64,
    /// Network bandwidth in Mbit/s.
    #[serde(default)]
    pub bandwidth_mbps: u64,
}

/// Upper bounds that catch absurd requests (typos like 4096 vCPUs or 4 PiB)
/// before they reach placement.
pub const MAX_RESOURCES: Resources = Resources {
    vcpus: 1024,
    memory_mib: 16 * 1024 * 1024,
    disk_gib: 1024 * 1024,
    bandwidth_mbps: 400_000,
};

impl Resources {
    /// The default reservation of a sliver: 1 vCPU, 256 MiB, 1 GiB, 10 Mbit/s.
    pub const SLIVER_DEFAULT: Resources = Resources {
        vcpus: 1,
        memory_mib: 256,
        disk_gib: 1,
        bandwidth_mbps: 10,
    };

    /// True when `self` fits into `free` in every dimension.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.vcpus <= free.vcpus
            && self.memory_mib <= free.memory_mib
            && self.disk_gib <= free.disk_gib
            && self.bandwidth_mbps <= free.bandwidth_mbps
    }

    /// `self - other`, saturating at zero.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            disk_gib: self.disk_gib.saturating_sub(other.disk_gib),
            bandwidth_mbps: self.bandwidth_mbps.saturating_sub(other.bandwidth_mbps),
        }
    }

    /// `self + other`, saturating.
    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            disk_gib: self.disk_gib.saturating_add(other.disk_gib),
            bandwidth_mbps: self.bandwidth_mbps.saturating_add(other.bandwidth_mbps),
        }
    }

    /// Checks a sliver request: at least 1 vCPU and 16 MiB, nothing absurd.
    pub fn validate_sliver(&self) -> Result<(), String> {
        if self.vcpus == 0 || self.memory_mib < 16 {
            return Err(format!(
                "a sliver needs at least 1 vCPU and 16 MiB of memory, not {self}"
            ));
        }
        self.validate_bounds()
    }

    /// Checks a node capacity: at least 1 vCPU and 64 MiB, nothing absurd.
    pub fn validate_capacity(&self) -> Result<(), String> {
        if self.vcpus == 0 || self.memory_mib < 64 {
            return Err(format!(
                "a node needs at least 1 vCPU and 64 MiB of memory, not {self}"
            ));
        }
        self.validate_bounds()
    }

    fn validate_bounds(&self) -> Result<(), String> {
        if self.fits_in(&MAX_RESOURCES) {
            Ok(())
        } else {
            Err(format!(
                "{self} is beyond what any node has (at most {MAX_RESOURCES}); check the units: memory is in MiB, disk in GiB, bandwidth in Mbit/s"
            ))
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} vCPU / {} MiB / {} GiB / {} Mbit/s",
            self.vcpus, self.memory_mib, self.disk_gib, self.bandwidth_mbps
        )
    }
}

/// What a node reports its host really has (`slicenet node run` measures
/// it). The operator's figure from `slicenet node add` stays a ceiling, a
/// policy; placement uses the smaller of the two in every dimension
/// ([`ReportedCapacity::cap`]). vCPUs and memory are always reported; disk
/// and bandwidth only when the node measures them (`None`: the operator's
/// figure stands), because a made-up 0 would stop all placement there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportedCapacity {
    /// Virtual CPUs the node can give slivers.
    pub vcpus: u32,
    /// Memory in MiB the node can give slivers (what the host keeps for itself excluded).
    pub memory_mib: u64,
    /// Disk in GiB, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<u64>,
    /// Network bandwidth in Mbit/s, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_mbps: Option<u64>,
}

impl ReportedCapacity {
    /// `configured` lowered to what the node reports, dimension by dimension.
    pub fn cap(&self, configured: &Resources) -> Resources {
        Resources {
            vcpus: configured.vcpus.min(self.vcpus),
            memory_mib: configured.memory_mib.min(self.memory_mib),
            disk_gib: self
                .disk_gib
                .map_or(configured.disk_gib, |d| configured.disk_gib.min(d)),
            bandwidth_mbps: self.bandwidth_mbps.map_or(configured.bandwidth_mbps, |b| {
                configured.bandwidth_mbps.min(b)
            }),
        }
    }

    /// Checks a report: zeros are the truth of a full host and pass, absurd values do not.
    pub fn validate(&self) -> Result<(), String> {
        let as_resources = Resources {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib.unwrap_or(0),
            bandwidth_mbps: self.bandwidth_mbps.unwrap_or(0),
        };
        if as_resources.fits_in(&MAX_RESOURCES) {
            Ok(())
        } else {
            Err(format!(
                "reported capacity {as_resources} is beyond what any node has (at most {MAX_RESOURCES}); report memory in MiB, disk in GiB, bandwidth in Mbit/s"
            ))
        }
    }
}

impl From<Resources> for ReportedCapacity {
    fn from(r: Resources) -> Self {
        ReportedCapacity {
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            disk_gib: Some(r.disk_gib),
            bandwidth_mbps: Some(r.bandwidth_mbps),
        }
    }
}

/// The virtual appliance a sliver boots: a name and the hash of its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    /// Appliance name, e.g. "default" (the node's built-in appliance).
    pub name: String,
    /// Content hash, `sha256:<64 hex digits>`; empty means "whatever the node has under this name".
    #[serde(default)]
    pub hash: String,
}

impl Default for Appliance {
    fn default() -> Self {
        Appliance {
            name: "default".into(),
            hash: String::new(),
        }
    }
}

impl Appliance {
    /// Checks the name and the hash format.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(format!(
                "appliance name {:?} is invalid: use 1-64 letters, digits, '.', '_' or '-'",
                self.name
            ));
        }
        if !self.hash.is_empty() {
            let hex = self.hash.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "appliance hash {:?} is invalid: write sha256:<64 hex digits>, or leave it empty",
                    self.hash
                ));
            }
        }
        Ok(())
    }
}

/// An Ethernet MAC address, written `02:53:c6:13:01:05`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The locally administered MAC the authority gives a guest with this enclave address:
    /// `02:53` followed by the four address bytes, unique within an enclave by construction.
    pub fn for_address(addr: std::net::Ipv4Addr) -> MacAddr {
        let o = addr.octets();
        MacAddr([0x02, 0x53, o[0], o[1], o[2], o[3]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<_> = s.split(':').collect();
        let mut out = [0u8; 6];
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address like 02:53:00:00:00:01"));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address like 02:53:00:00:00:01"))?;
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Checks names of things in the registry; each error says the rule.
pub mod names {
    fn ident(s: &str, max: usize, extra: &[u8]) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
    }

    /// Site names are PlanetLab login bases: 2-20 lowercase letters or digits, starting with a letter.
    pub fn site(s: &str) -> Result<(), String> {
        if s.len() >= 2 && ident(s, 20, b"") {
            Ok(())
        } else {
            Err(format!("site name {s:?} is invalid: use 2-20 lowercase letters or digits, starting with a letter (e.g. \"ams\")"))
        }
    }

    /// Slice names are `<site>_<name>`, e.g. `ams_probes`, at most 64 characters.
    pub fn slice(s: &str) -> Result<(), String> {
        let ok = match s.split_once('_') {
            Some((site_part, rest)) => {
                site(site_part).is_ok()
                    && !rest.is_empty()
                    && s.len() <= 64
                    && rest
                        .bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            }
            None => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("slice name {s:?} is invalid: write <site>_<name> with lowercase letters, digits and '_', at most 64 characters (e.g. \"ams_probes\")"))
        }
    }

    /// The site prefix of a valid slice name.
    pub fn slice_site(s: &str) -> &str {
        s.split_once('_').map(|(a, _)| a).unwrap_or(s)
    }

    /// Node names are DNS-like: lowercase labels of letters, digits and '-', joined by '.', at most 63 characters.
    pub fn node(s: &str) -> Result<(), String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            });
        if ok {
            Ok(())
        } else {
            Err(format!("node name {s:?} is invalid: use lowercase letters, digits, '-' and '.', at most 63 characters (e.g. \"ams-n1\")"))
        }
    }

    /// Principal (user) names: a lowercase letter, then letters, digits, '.', '_' or '-', at most 64.
    pub fn principal(s: &str) -> Result<(), String> {
        if ident(s, 64, b"._-") {
            Ok(())
        } else {
            Err(format!("user name {s:?} is invalid: start with a lowercase letter, then lowercase letters, digits, '.', '_' or '-', at most 64 characters"))
        }
    }

    /// Enclave and gateway names: a lowercase letter, then letters, digits, '_' or '-', at most 32.
    pub fn short(kind: &str, s: &str) -> Result<(), String> {
        if ident(s, 32, b"_-") {
            Ok(())
        } else {
            Err(format!("{kind} name {s:?} is invalid: start with a lowercase letter, then lowercase letters, digits, '_' or '-', at most 32 characters"))
        }
    }

    /// Regions and countries: short lowercase/uppercase codes like "eu" or "NL".
    pub fn code(kind: &str, s: &str) -> Result<(), String> {
        if !s.is_empty()
            && s.len() <= 16
            && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            Ok(())
        } else {
            Err(format!(
                "{kind} {s:?} is invalid: use 1-16 letters, digits or '-' (e.g. \"eu\", \"NL\")"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_planetlab_rules() {
        assert!(names::site("ams").is_ok());
        assert!(names::site("a").is_err());
        assert!(names::site("Ams").is_err());
        assert!(names::slice("ams_probes").is_ok());
        assert!(names::slice("ams").is_err());
        assert!(names::slice("ams_").is_err());
        assert!(names::slice("ams_Bad").is_err());
        assert_eq!(names::slice_site("ams_probes_2"), "ams");
        assert!(names::node("ams-n1.example").is_ok());
        assert!(names::node("-bad").is_err());
        assert!(names::node("a..b").is_err());
        assert!(names::principal("alice.smith").is_ok());
        assert!(names::principal("1alice").is_err());
    }

    #[test]
    fn absurd_and_empty_resources_are_refused() {
        assert!(Resources::SLIVER_DEFAULT.validate_sliver().is_ok());
        let zero = Resources {
            vcpus: 0,
            ..Resources::SLIVER_DEFAULT
        };
        assert!(zero.validate_sliver().is_err());
        let huge = Resources {
            memory_mib: u64::MAX,
            ..Resources::SLIVER_DEFAULT
        };
        assert!(huge.validate_sliver().unwrap_err().contains("units"));
    }

    #[test]
    fn reported_capacity_lowers_the_configured_figure_where_measured() {
        let configured = Resources {
            vcpus: 8,
            memory_mib: 16384,
            disk_gib: 100,
            bandwidth_mbps: 1000,
        };
        let report = ReportedCapacity {
            vcpus: 16,
            memory_mib: 4096,
            disk_gib: Some(40),
            bandwidth_mbps: None,
        };
        assert_eq!(
            report.cap(&configured),
            Resources {
                vcpus: 8,
                memory_mib: 4096,
                disk_gib: 40,
                bandwidth_mbps: 1000,
            }
        );
        assert!(ReportedCapacity {
            vcpus: 0,
            memory_mib: 0,
            disk_gib: None,
            bandwidth_mbps: None
        }
        .validate()
        .is_ok());
        let absurd = ReportedCapacity {
            memory_mib: u64::MAX,
            ..report
        };
        assert!(absurd.validate().unwrap_err().contains("MiB"));
        let json: ReportedCapacity =
            serde_json::from_str(r#"{"vcpus": 2, "memory_mib": 1024}"#).unwrap();
        assert_eq!(json.disk_gib, None);
    }

    #[test]
    fn mac_addresses_round_trip() {
        let mac = MacAddr::for_address("198.19.1.5".parse().unwrap());
        assert_eq!(mac.to_string(), "02:53:c6:13:01:05");
        assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
        assert!("02:53".parse::<MacAddr>().is_err());
    }

    #[test]
    fn appliance_hashes_must_be_sha256_hex() {
        assert!(Appliance::default().validate().is_ok());
        let good = Appliance {
            name: "probe".into(),
            hash: format!("sha256:{}", "a".repeat(64)),
        };
        assert!(good.validate().is_ok());
        let bad = Appliance {
            name: "probe".into(),
            hash: "md5:abc".into(),
        };
        assert!(bad.validate().is_err());
    }
}
