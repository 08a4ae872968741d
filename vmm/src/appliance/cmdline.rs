//! Composition of the guest kernel command line understood by the default appliance's init
//! (contract 3): `slicenet.net=<mac>[,<ipv4>/<prefix>][,mtu=<bytes>]` per NIC, `slicenet.hostname=<name>`,
//! `slicenet.run=<base64 of a shell command>`.

use std::net::Ipv4Addr;

use base64::Engine;

use super::mac::MacAddr;

/// The line the default appliance's init prints on the serial console, followed by a space and
/// the hostname, once its NICs are configured.
pub const READY_MARKER: &str = "SLICENET-READY";

/// Network configuration of one guest NIC, identified by its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestNet {
    /// The NIC's MAC (the init finds the interface by it).
    pub mac: MacAddr,
    /// Address and prefix length to assign, or `None` to only bring the link up.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// MTU to set (the switch port's, so the guest never sends frames the
    /// overlay must drop as oversize); `None` keeps the driver's default.
    pub mtu: Option<u16>,
}

/// Why a command line could not be composed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// The hostname is not a valid DNS label.
    #[error("hostname {0:?} must be 1-63 letters, digits or '-' (not starting with '-')")]
    BadHostname(String),
    /// A prefix length above 32.
    #[error("IPv4 prefix length /{0} is out of range 0..=32")]
    BadPrefix(u8),
}

/// Appends the per-sliver parameters to the appliance's own command line.
pub fn compose_cmdline(
    base: &str,
    nets: &[GuestNet],
    hostname: Option<&str>,
    run: Option<&str>,
) -> Result<String, CmdlineError> {
    let mut out = base.trim().to_string();
    let mut push = |param: String| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&param);
    };
    for net in nets {
        let mut param = format!("slicenet.net={}", net.mac);
        match net.ipv4 {
            Some((_, prefix)) if prefix > 32 => return Err(CmdlineError::BadPrefix(prefix)),
            Some((addr, prefix)) => param.push_str(&format!(",{addr}/{prefix}")),
            None => {}
        }
        if let Some(mtu) = net.mtu {
            param.push_str(&format!(",mtu={mtu}"));
        }
        push(param);
    }
    if let Some(name) = hostname {
        let valid = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with('-')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(CmdlineError::BadHostname(name.to_string()));
        }
        push(format!("slicenet.hostname={name}"));
    }
    if let Some(command) = run {
        push(format!(
            "slicenet.run={}",
            base64::engine::general_purpose::STANDARD.encode(command)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appliance::parse_mac;

    #[test]
    fn cmdline_carries_nics_hostname_and_command() {
        let nets = [
            GuestNet {
                mac: parse_mac("02:00:00:00:00:01").unwrap(),
                ipv4: Some((Ipv4Addr::new(198, 19, 1, 2), 24)),
                mtu: None,
            },
            GuestNet {
                mac: parse_mac("02:00:00:00:00:02").unwrap(),
                ipv4: None,
                mtu: Some(1390),
            },
        ];
        let line = compose_cmdline(
            "console=ttyS0 ",
            &nets,
            Some("probe-1"),
            Some("ping -c 1 x"),
        )
        .unwrap();
        assert_eq!(
            line,
            "console=ttyS0 slicenet.net=02:00:00:00:00:01,198.19.1.2/24 \
             slicenet.net=02:00:00:00:00:02,mtu=1390 slicenet.hostname=probe-1 \
             slicenet.run=cGluZyAtYyAxIHg="
        );
    }

    #[test]
    fn bad_hostnames_and_prefixes_are_refused() {
        for bad in ["", "-x", "a b", "a;reboot", &"x".repeat(64)] {
            assert!(
                compose_cmdline("", &[], Some(bad), None).is_err(),
                "{bad:?}"
            );
        }
        let net = GuestNet {
            mac: parse_mac("02:00:00:00:00:01").unwrap(),
            ipv4: Some((Ipv4Addr::LOCALHOST, 33)),
            mtu: None,
        };
        assert_eq!(
            compose_cmdline("", &[net], None, None),
            Err(CmdlineError::BadPrefix(33))
        );
    }
}
