//! The signed node record on the wire.
//!
//! A node record says where a node is and how to reach its data plane; it is
//! signed with the node's ed25519 identity key, which is also its libp2p
//! identity, so the record binds the node's WireGuard key, tunnel address,
//! underlay endpoints and membership contact addresses to that identity.
//! Layout (version 2, big-endian):
//!
//! ```text
//!   0      version          u8   = 2
//!   1      flags            u8   bit 0: LEAVING (the node is shutting down)
//!   2..10  seq              u64  strictly increasing per node (starts at unix µs)
//!  10..18  timestamp_ms     u64  unix time the record was signed, milliseconds
//!  18..50  node_id          [32] ed25519 public key (= libp2p identity)
//!  50..82  wireguard_key    [32] x25519 public key
//!  82..86  tunnel_addr      [4]  IPv4 overlay tunnel address
//!  86..90  latitude         i32  microdegrees, -90e6..=90e6
//!  90..94  longitude        i32  microdegrees, -180e6..=180e6
//!  94..96  vcpus            u16
//!  96..100 memory_mib       u32
//! 100..104 disk_gib         u32
//! 104      endpoint_count   u8   <= 8
//! 105      site_len         u8
//! 106      region_len       u8
//! 107      version_len      u8   software version text length
//! 108      contact_count    u8   <= 4
//! 109..    endpoints        endpoint_count x 19 bytes:
//!                             family u8 (4|6), address [16] (IPv4: 4 bytes then 12 zero), port u16
//!          contacts         contact_count x 19 bytes, where other nodes dial this node's
//!                           membership endpoint: kind u8, address [16], port u16 with
//!                             kind 4 / 6: TCP over IPv4 (4 bytes then 12 zero) / IPv6
//!                             kind 0x6d: libp2p's in-process memory transport (simulations):
//!                                        u64 port then 8 zero bytes, port field 0
//!          site, region, software version (UTF-8, no control characters)
//!  -64..   signature        ed25519 over DOMAIN || every byte before the signature
//! ```
//!
//! Parsing is zero-copy ([`NodeRecordPacket`]) and total: every length is
//! checked once in [`NodeRecordPacket::new_checked`], after which no accessor
//! can panic. [`NodeRecord::parse`] adds the semantic checks, and only
//! [`VerifiedNodeRecord::verify`] (or signing) yields a record other code may
//! trust.
//!
//! The contact addresses let any member dial any other directly (a monitor
//! dials the nodes it watches) without a DHT lookup, and because they are
//! signed a lying peer cannot point a node id at an address of its choosing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::identity::{verify, NodeId, NodeIdentity, WgPublicKey};
use super::PeerAddr;

/// The only record version this code emits and accepts.
pub const RECORD_VERSION: u8 = 2;
/// Flag bit: the node is leaving the overlay on purpose (graceful shutdown).
pub const FLAG_LEAVING: u8 = 0x01;
/// Most underlay endpoints one record may carry.
pub const MAX_ENDPOINTS: usize = 8;
/// Most membership contact addresses one record may carry.
pub const MAX_CONTACTS: usize = 4;
/// Contact kind byte of libp2p's in-process memory transport.
const CONTACT_MEMORY: u8 = 0x6d;
/// Most bytes of any one text field (site, region, software version).
pub const MAX_TEXT_LEN: usize = u8::MAX as usize;
/// Largest possible encoded record; anything longer is refused before parsing.
pub const MAX_RECORD_LEN: usize = field::HEADER_LEN
    + (MAX_ENDPOINTS + MAX_CONTACTS) * field::ENDPOINT_LEN
    + 3 * MAX_TEXT_LEN
    + SIGNATURE_LEN;
/// Length of the trailing signature.
pub const SIGNATURE_LEN: usize = 64;
/// Domain separation: a record signature can never be confused with any other
/// signature made with the same node key.
const DOMAIN: &[u8] = b"slicenet node record v2\n";

mod field {
    use std::ops::Range;
    pub const VERSION: usize = 0;
    pub const FLAGS: usize = 1;
    pub const SEQ: Range<usize> = 2..10;
    pub const TIMESTAMP: Range<usize> = 10..18;
    pub const NODE_ID: Range<usize> = 18..50;
    pub const WG_KEY: Range<usize> = 50..82;
    pub const TUNNEL_ADDR: Range<usize> = 82..86;
    pub const LATITUDE: Range<usize> = 86..90;
    pub const LONGITUDE: Range<usize> = 90..94;
    pub const VCPUS: Range<usize> = 94..96;
    pub const MEMORY_MIB: Range<usize> = 96..100;
    pub const DISK_GIB: Range<usize> = 100..104;
    pub const ENDPOINT_COUNT: usize = 104;
    pub const SITE_LEN: usize = 105;
    pub const REGION_LEN: usize = 106;
    pub const VERSION_LEN: usize = 107;
    pub const CONTACT_COUNT: usize = 108;
    pub const HEADER_LEN: usize = 109;
    /// One endpoint or contact: family, 16 address bytes, port.
    pub const ENDPOINT_LEN: usize = 19;
}

/// Why a record was refused. Each variant is counted separately by membership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the header or than the lengths in it require.
    #[error("node record truncated: {len} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the header requires.
        need: usize,
    },
    /// More bytes than any valid record has.
    #[error("node record of {len} bytes exceeds the maximum of {max}")]
    Oversized {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Extra bytes after the signature.
    #[error("node record has {extra} trailing bytes after its signature")]
    TrailingBytes {
        /// How many extra bytes.
        extra: usize,
    },
    /// A version this code does not understand.
    #[error("node record version {0} is not supported (this node speaks version {RECORD_VERSION}); upgrade the node")]
    UnsupportedVersion(u8),
    /// Flag bits this version does not define.
    #[error("node record has unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// More endpoints than allowed.
    #[error("node record lists {0} underlay endpoints, at most {MAX_ENDPOINTS} are allowed")]
    TooManyEndpoints(usize),
    /// More contact addresses than allowed.
    #[error("node record lists {0} contact addresses, at most {MAX_CONTACTS} are allowed")]
    TooManyContacts(usize),
    /// A contact whose kind byte is unknown or whose padding is not zero.
    #[error("node record contact {index} is malformed (kind byte {kind})")]
    BadContact {
        /// Which contact.
        index: usize,
        /// Its kind byte.
        kind: u8,
    },
    /// An endpoint family byte that is neither 4 nor 6, or IPv4 padding that is not zero.
    #[error("node record endpoint {index} is malformed (family byte {family})")]
    BadEndpoint {
        /// Which endpoint.
        index: usize,
        /// Its family byte.
        family: u8,
    },
    /// Latitude or longitude out of range.
    #[error("node record location ({lat_e6}, {lon_e6}) µ° is outside the globe")]
    LocationOutOfRange {
        /// Latitude in microdegrees.
        lat_e6: i32,
        /// Longitude in microdegrees.
        lon_e6: i32,
    },
    /// A text field that is not UTF-8, has control characters, or (site) is empty.
    #[error(
        "node record field `{0}` is not printable UTF-8 (or is empty where a value is required)"
    )]
    BadText(&'static str),
    /// A text field longer than 255 bytes (only when building a record).
    #[error("node record field `{0}` is longer than {MAX_TEXT_LEN} bytes")]
    TextTooLong(&'static str),
    /// The signature does not verify under the node id the record claims.
    #[error("node record signature does not verify under node id {0}")]
    BadSignature(NodeId),
}

/// A zero-copy view of an encoded node record.
#[derive(Debug, Clone, Copy)]
pub struct NodeRecordPacket<T: AsRef<[u8]>> {
    buffer: T,
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}
fn array32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[..32]);
    a
}

impl<T: AsRef<[u8]>> NodeRecordPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic until [`Self::check_len`] passed.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after checking that every field the header describes is present.
    pub fn new_checked(buffer: T) -> Result<Self, RecordError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the buffer length against the header's counts (exact length: no trailing bytes).
    pub fn check_len(&self) -> Result<(), RecordError> {
        let b = self.buffer.as_ref();
        if b.len() > MAX_RECORD_LEN {
            return Err(RecordError::Oversized {
                len: b.len(),
                max: MAX_RECORD_LEN,
            });
        }
        if b.len() < field::HEADER_LEN + SIGNATURE_LEN {
            return Err(RecordError::Truncated {
                len: b.len(),
                need: field::HEADER_LEN + SIGNATURE_LEN,
            });
        }
        let count = b[field::ENDPOINT_COUNT] as usize;
        if count > MAX_ENDPOINTS {
            return Err(RecordError::TooManyEndpoints(count));
        }
        let contacts = b[field::CONTACT_COUNT] as usize;
        if contacts > MAX_CONTACTS {
            return Err(RecordError::TooManyContacts(contacts));
        }
        let need = self.total_len_from_header();
        if b.len() < need {
            return Err(RecordError::Truncated { len: b.len(), need });
        }
        if b.len() > need {
            return Err(RecordError::TrailingBytes {
                extra: b.len() - need,
            });
        }
        Ok(())
    }

    fn total_len_from_header(&self) -> usize {
        let b = self.buffer.as_ref();
        field::HEADER_LEN
            + (b[field::ENDPOINT_COUNT] as usize + b[field::CONTACT_COUNT] as usize)
                * field::ENDPOINT_LEN
            + b[field::SITE_LEN] as usize
            + b[field::REGION_LEN] as usize
            + b[field::VERSION_LEN] as usize
            + SIGNATURE_LEN
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Record format version.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    /// Flag bits.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// Sequence number.
    pub fn seq(&self) -> u64 {
        be_u64(&self.buffer.as_ref()[field::SEQ])
    }
    /// Signing time, unix milliseconds.
    pub fn timestamp_ms(&self) -> u64 {
        be_u64(&self.buffer.as_ref()[field::TIMESTAMP])
    }
    /// The claimed node id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_bytes(array32(&self.buffer.as_ref()[field::NODE_ID]))
    }
    /// The WireGuard public key.
    pub fn wireguard_key(&self) -> WgPublicKey {
        WgPublicKey::from_bytes(array32(&self.buffer.as_ref()[field::WG_KEY]))
    }
    /// The overlay tunnel address.
    pub fn tunnel_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::TUNNEL_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    /// Latitude in microdegrees.
    pub fn latitude_e6(&self) -> i32 {
        be_u32(&self.buffer.as_ref()[field::LATITUDE]) as i32
    }
    /// Longitude in microdegrees.
    pub fn longitude_e6(&self) -> i32 {
        be_u32(&self.buffer.as_ref()[field::LONGITUDE]) as i32
    }
    /// Virtual CPUs offered.
    pub fn vcpus(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[field::VCPUS])
    }
    /// Memory offered, MiB.
    pub fn memory_mib(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[field::MEMORY_MIB])
    }
    /// Disk offered, GiB.
    pub fn disk_gib(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[field::DISK_GIB])
    }
    /// Number of underlay endpoints.
    pub fn endpoint_count(&self) -> usize {
        self.buffer.as_ref()[field::ENDPOINT_COUNT] as usize
    }
    /// The raw bytes of endpoint `index` (family, address, port); `index < endpoint_count()`.
    pub fn endpoint_bytes(&self, index: usize) -> &[u8] {
        let start = field::HEADER_LEN + index * field::ENDPOINT_LEN;
        &self.buffer.as_ref()[start..start + field::ENDPOINT_LEN]
    }
    /// Number of membership contact addresses.
    pub fn contact_count(&self) -> usize {
        self.buffer.as_ref()[field::CONTACT_COUNT] as usize
    }
    /// The raw bytes of contact `index` (kind, address, port); `index < contact_count()`.
    pub fn contact_bytes(&self, index: usize) -> &[u8] {
        let start = field::HEADER_LEN + (self.endpoint_count() + index) * field::ENDPOINT_LEN;
        &self.buffer.as_ref()[start..start + field::ENDPOINT_LEN]
    }
    fn text_start(&self) -> usize {
        field::HEADER_LEN + (self.endpoint_count() + self.contact_count()) * field::ENDPOINT_LEN
    }
    /// Site name bytes.
    pub fn site(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let start = self.text_start();
        &b[start..start + b[field::SITE_LEN] as usize]
    }
    /// Region name bytes.
    pub fn region(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let start = self.text_start() + b[field::SITE_LEN] as usize;
        &b[start..start + b[field::REGION_LEN] as usize]
    }
    /// Software version bytes.
    pub fn software_version(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let start = self.text_start() + b[field::SITE_LEN] as usize + b[field::REGION_LEN] as usize;
        &b[start..start + b[field::VERSION_LEN] as usize]
    }
    /// Every byte the signature covers (all but the signature).
    pub fn signed_bytes(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..b.len() - SIGNATURE_LEN]
    }
    /// The signature.
    pub fn signature(&self) -> [u8; 64] {
        let b = self.buffer.as_ref();
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&b[b.len() - SIGNATURE_LEN..]);
        sig
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NodeRecordPacket<T> {
    fn set(&mut self, range: std::ops::Range<usize>, bytes: &[u8]) {
        self.buffer.as_mut()[range].copy_from_slice(bytes);
    }
    fn set_byte(&mut self, at: usize, value: u8) {
        self.buffer.as_mut()[at] = value;
    }
    /// Sets the signature (the last 64 bytes).
    pub fn set_signature(&mut self, signature: &[u8; 64]) {
        let len = self.buffer.as_ref().len();
        self.set(len - SIGNATURE_LEN..len, signature);
    }
}

/// Geographic location of a node's site, in microdegrees (exact on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GeoLocation {
    /// Latitude, microdegrees north.
    pub lat_e6: i32,
    /// Longitude, microdegrees east.
    pub lon_e6: i32,
}

impl GeoLocation {
    /// A location from degrees, rounded to microdegrees; `None` outside the globe.
    pub fn from_degrees(lat: f64, lon: f64) -> Option<Self> {
        let loc = Self {
            lat_e6: (lat * 1e6).round() as i32,
            lon_e6: (lon * 1e6).round() as i32,
        };
        loc.is_valid().then_some(loc)
    }
    /// Latitude in degrees.
    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e6) / 1e6
    }
    /// Longitude in degrees.
    pub fn lon(&self) -> f64 {
        f64::from(self.lon_e6) / 1e6
    }
    fn is_valid(&self) -> bool {
        (-90_000_000..=90_000_000).contains(&self.lat_e6)
            && (-180_000_000..=180_000_000).contains(&self.lon_e6)
    }
}

/// Resources a node offers to slivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Virtual CPUs.
    pub vcpus: u16,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Disk, GiB.
    pub disk_gib: u32,
}

/// What a node advertises about itself: everything in its record except identity and freshness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Site name (required, printable).
    pub site: String,
    /// Region name (e.g. `eu`, `asia`).
    pub region: String,
    /// Site location.
    pub location: GeoLocation,
    /// Offered capacity.
    pub capacity: Capacity,
    /// The node's WireGuard public key.
    pub wireguard_key: WgPublicKey,
    /// The node's overlay tunnel address (198.19.0.0/16 in testbeds).
    pub tunnel_addr: Ipv4Addr,
    /// UDP endpoints where the node's WireGuard socket listens.
    pub underlay: Vec<SocketAddr>,
    /// Software version the node runs.
    pub software_version: String,
}

/// A complete node record (not necessarily verified: see [`VerifiedNodeRecord`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Who the record is about and who must have signed it.
    pub node_id: NodeId,
    /// Sequence number; a record replaces another of the same node only with a higher one.
    pub seq: u64,
    /// Signing time, unix milliseconds.
    pub timestamp_ms: u64,
    /// Set in the last record a node publishes before a graceful shutdown.
    pub leaving: bool,
    /// The advertised content.
    pub info: NodeInfo,
    /// Where other members dial this node's membership endpoint (at most [`MAX_CONTACTS`]).
    pub contacts: Vec<PeerAddr>,
}

fn text(what: &'static str, bytes: &[u8], required: bool) -> Result<String, RecordError> {
    let s = std::str::from_utf8(bytes).map_err(|_| RecordError::BadText(what))?;
    if (required && s.is_empty()) || s.chars().any(char::is_control) {
        return Err(RecordError::BadText(what));
    }
    Ok(s.to_owned())
}

fn check_text(what: &'static str, s: &str, required: bool) -> Result<(), RecordError> {
    if s.len() > MAX_TEXT_LEN {
        return Err(RecordError::TextTooLong(what));
    }
    text(what, s.as_bytes(), required).map(|_| ())
}

impl NodeRecord {
    /// Parses and validates a record's content (the signature is NOT checked here).
    pub fn parse<T: AsRef<[u8]>>(packet: &NodeRecordPacket<T>) -> Result<Self, RecordError> {
        if packet.version() != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(packet.version()));
        }
        if packet.flags() & !FLAG_LEAVING != 0 {
            return Err(RecordError::UnknownFlags(packet.flags()));
        }
        let location = GeoLocation {
            lat_e6: packet.latitude_e6(),
            lon_e6: packet.longitude_e6(),
        };
        if !location.is_valid() {
            return Err(RecordError::LocationOutOfRange {
                lat_e6: location.lat_e6,
                lon_e6: location.lon_e6,
            });
        }
        let mut underlay = Vec::with_capacity(packet.endpoint_count());
        for index in 0..packet.endpoint_count() {
            let e = packet.endpoint_bytes(index);
            let (family, addr, port) = (e[0], &e[1..17], be_u16(&e[17..19]));
            let bad = RecordError::BadEndpoint { index, family };
            let ip = match family {
                4 if addr[4..].iter().all(|&b| b == 0) => {
                    IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
                }
                6 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(addr);
                    IpAddr::V6(Ipv6Addr::from(a))
                }
                _ => return Err(bad),
            };
            underlay.push(SocketAddr::new(ip, port));
        }
        let mut contacts = Vec::with_capacity(packet.contact_count());
        for index in 0..packet.contact_count() {
            let c = packet.contact_bytes(index);
            let (kind, addr, port) = (c[0], &c[1..17], be_u16(&c[17..19]));
            let bad = RecordError::BadContact { index, kind };
            contacts.push(match kind {
                4 if addr[4..].iter().all(|&b| b == 0) => PeerAddr::Tcp(SocketAddr::new(
                    Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into(),
                    port,
                )),
                6 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(addr);
                    PeerAddr::Tcp(SocketAddr::new(Ipv6Addr::from(a).into(), port))
                }
                CONTACT_MEMORY if addr[8..].iter().all(|&b| b == 0) && port == 0 => {
                    PeerAddr::Memory(be_u64(&addr[..8]))
                }
                _ => return Err(bad),
            });
        }
        Ok(Self {
            node_id: packet.node_id(),
            seq: packet.seq(),
            timestamp_ms: packet.timestamp_ms(),
            leaving: packet.flags() & FLAG_LEAVING != 0,
            info: NodeInfo {
                site: text("site", packet.site(), true)?,
                region: text("region", packet.region(), false)?,
                location,
                capacity: Capacity {
                    vcpus: packet.vcpus(),
                    memory_mib: packet.memory_mib(),
                    disk_gib: packet.disk_gib(),
                },
                wireguard_key: packet.wireguard_key(),
                tunnel_addr: packet.tunnel_addr(),
                underlay,
                software_version: text("software_version", packet.software_version(), false)?,
            },
            contacts,
        })
    }

    /// Checks that the record can be encoded (text lengths, endpoint count, location).
    pub fn check(&self) -> Result<(), RecordError> {
        let info = &self.info;
        check_text("site", &info.site, true)?;
        check_text("region", &info.region, false)?;
        check_text("software_version", &info.software_version, false)?;
        if info.underlay.len() > MAX_ENDPOINTS {
            return Err(RecordError::TooManyEndpoints(info.underlay.len()));
        }
        if self.contacts.len() > MAX_CONTACTS {
            return Err(RecordError::TooManyContacts(self.contacts.len()));
        }
        if !info.location.is_valid() {
            return Err(RecordError::LocationOutOfRange {
                lat_e6: info.location.lat_e6,
                lon_e6: info.location.lon_e6,
            });
        }
        Ok(())
    }

    /// Encoded length including the signature.
    pub fn buffer_len(&self) -> usize {
        field::HEADER_LEN
            + (self.info.underlay.len() + self.contacts.len()) * field::ENDPOINT_LEN
            + self.info.site.len()
            + self.info.region.len()
            + self.info.software_version.len()
            + SIGNATURE_LEN
    }

    /// Writes the record into `packet` (of exactly [`Self::buffer_len`] bytes), signature zeroed.
    /// Call [`Self::check`] first: lengths beyond the format's limits are truncated otherwise.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut NodeRecordPacket<T>) {
        let info = &self.info;
        packet.set_byte(field::VERSION, RECORD_VERSION);
        packet.set_byte(field::FLAGS, if self.leaving { FLAG_LEAVING } else { 0 });
        packet.set(field::SEQ, &self.seq.to_be_bytes());
        packet.set(field::TIMESTAMP, &self.timestamp_ms.to_be_bytes());
        packet.set(field::NODE_ID, self.node_id.as_bytes());
        packet.set(field::WG_KEY, info.wireguard_key.as_bytes());
        packet.set(field::TUNNEL_ADDR, &info.tunnel_addr.octets());
        packet.set(field::LATITUDE, &info.location.lat_e6.to_be_bytes());
        packet.set(field::LONGITUDE, &info.location.lon_e6.to_be_bytes());
        packet.set(field::VCPUS, &info.capacity.vcpus.to_be_bytes());
        packet.set(field::MEMORY_MIB, &info.capacity.memory_mib.to_be_bytes());
        packet.set(field::DISK_GIB, &info.capacity.disk_gib.to_be_bytes());
        let count = info.underlay.len().min(MAX_ENDPOINTS);
        packet.set_byte(field::ENDPOINT_COUNT, count as u8);
        let contacts = self.contacts.len().min(MAX_CONTACTS);
        packet.set_byte(field::CONTACT_COUNT, contacts as u8);
        let texts = [
            (field::SITE_LEN, info.site.as_bytes()),
            (field::REGION_LEN, info.region.as_bytes()),
            (field::VERSION_LEN, info.software_version.as_bytes()),
        ];
        for (at, t) in texts {
            packet.set_byte(at, t.len().min(MAX_TEXT_LEN) as u8);
        }
        let mut at = field::HEADER_LEN;
        for endpoint in &info.underlay[..count] {
            let mut e = [0u8; field::ENDPOINT_LEN];
            match endpoint.ip() {
                IpAddr::V4(ip) => {
                    e[0] = 4;
                    e[1..5].copy_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    e[0] = 6;
                    e[1..17].copy_from_slice(&ip.octets());
                }
            }
            e[17..19].copy_from_slice(&endpoint.port().to_be_bytes());
            packet.set(at..at + field::ENDPOINT_LEN, &e);
            at += field::ENDPOINT_LEN;
        }
        for contact in &self.contacts[..contacts] {
            let mut c = [0u8; field::ENDPOINT_LEN];
            match contact {
                PeerAddr::Tcp(sa) => {
                    match sa.ip() {
                        IpAddr::V4(ip) => {
                            c[0] = 4;
                            c[1..5].copy_from_slice(&ip.octets());
                        }
                        IpAddr::V6(ip) => {
                            c[0] = 6;
                            c[1..17].copy_from_slice(&ip.octets());
                        }
                    }
                    c[17..19].copy_from_slice(&sa.port().to_be_bytes());
                }
                PeerAddr::Memory(port) => {
                    c[0] = CONTACT_MEMORY;
                    c[1..9].copy_from_slice(&port.to_be_bytes());
                }
            }
            packet.set(at..at + field::ENDPOINT_LEN, &c);
            at += field::ENDPOINT_LEN;
        }
        for (_, t) in texts {
            let t = &t[..t.len().min(MAX_TEXT_LEN)];
            packet.set(at..at + t.len(), t);
            at += t.len();
        }
        packet.set_signature(&[0u8; 64]);
    }

    /// Encodes and signs the record with `identity`, whose node id must be `self.node_id`.
    pub fn sign(&self, identity: &NodeIdentity) -> Result<VerifiedNodeRecord, RecordError> {
        self.check()?;
        if identity.node_id() != self.node_id {
            return Err(RecordError::BadSignature(self.node_id));
        }
        let mut packet = NodeRecordPacket::new_unchecked(vec![0u8; self.buffer_len()]);
        self.emit(&mut packet);
        let signature = identity.sign(&signing_input(packet.signed_bytes()));
        packet.set_signature(&signature);
        Ok(VerifiedNodeRecord {
            record: Arc::new(self.clone()),
            bytes: packet.into_inner().into(),
        })
    }
}

fn signing_input(signed: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(DOMAIN.len() + signed.len());
    input.extend_from_slice(DOMAIN);
    input.extend_from_slice(signed);
    input
}

/// A node record whose signature verified under its own node id: the only form other code trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNodeRecord {
    record: Arc<NodeRecord>,
    bytes: Arc<[u8]>,
}

impl VerifiedNodeRecord {
    /// Parses `bytes` and verifies the signature under the node id the record claims.
    pub fn verify(bytes: &[u8]) -> Result<Self, RecordError> {
        let packet = NodeRecordPacket::new_checked(bytes)?;
        let record = NodeRecord::parse(&packet)?;
        Self::verify_parsed(&packet, record)
    }

    /// Verifies an already parsed record (lets callers do cheap checks before the signature).
    pub(crate) fn verify_parsed(
        packet: &NodeRecordPacket<&[u8]>,
        record: NodeRecord,
    ) -> Result<Self, RecordError> {
        if !verify(
            &record.node_id,
            &signing_input(packet.signed_bytes()),
            &packet.signature(),
        ) {
            return Err(RecordError::BadSignature(record.node_id));
        }
        Ok(Self {
            record: Arc::new(record),
            bytes: packet.into_inner().into(),
        })
    }

    /// The verified content.
    pub fn record(&self) -> &NodeRecord {
        &self.record
    }
    /// The node this record is about (and that signed it).
    pub fn node_id(&self) -> NodeId {
        self.record.node_id
    }
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.record.seq
    }
    /// The advertised content.
    pub fn info(&self) -> &NodeInfo {
        &self.record.info
    }
    /// The signed encoding, as received or sent (forwarded verbatim to other nodes).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 test-vector seed 1, so the public key in the literal bytes below is fixed.
    fn test_identity() -> NodeIdentity {
        NodeIdentity::from_seed([
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ])
    }

    fn sample_record() -> NodeRecord {
        NodeRecord {
            node_id: test_identity().node_id(),
            seq: 0x0102_0304_0506_0708,
            timestamp_ms: 0x0000_0190_0000_0001,
            leaving: false,
            info: NodeInfo {
                site: "par".into(),
                region: "eu".into(),
                location: GeoLocation {
                    lat_e6: 48_856_600,
                    lon_e6: 2_352_200,
                },
                capacity: Capacity {
                    vcpus: 8,
                    memory_mib: 16384,
                    disk_gib: 100,
                },
                wireguard_key: WgPublicKey::from_bytes([0x77; 32]),
                tunnel_addr: Ipv4Addr::new(198, 19, 255, 1),
                underlay: vec!["198.18.0.1:51820".parse().unwrap()],
                software_version: "0.1".into(),
            },
            contacts: vec![PeerAddr::Tcp("198.18.0.1:7946".parse().unwrap())],
        }
    }

    /// The sample record, byte by byte, signature zeroed.
    #[rustfmt::skip]
    const SAMPLE_UNSIGNED: [u8; 109 + 19 + 19 + 3 + 2 + 3 + 64] = {
        let mut b = [0u8; 109 + 19 + 19 + 3 + 2 + 3 + 64];
        let head: [u8; 109 + 19 + 19 + 8] = [
            0x02, 0x00,                                     // version, flags
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // seq
            0x00, 0x00, 0x01, 0x90, 0x00, 0x00, 0x00, 0x01, // timestamp
            // node id: RFC 8032 TEST 1 public key
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
            0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
            // WireGuard key
            0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77,
            0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77,
            198, 19, 255, 1,                                // tunnel address
            0x02, 0xe9, 0x7e, 0x18,                         // latitude 48_856_600
            0x00, 0x23, 0xe4, 0x48,                         // longitude 2_352_200
            0x00, 0x08,                                     // vcpus
            0x00, 0x00, 0x40, 0x00,                         // memory MiB
            0x00, 0x00, 0x00, 0x64,                         // disk GiB
            1, 3, 2, 3, 1,                                  // endpoints, site/region/version lengths, contacts
            4, 198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xca, 0x6c, // 198.18.0.1:51820
            4, 198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x1f, 0x0a, // contact 198.18.0.1:7946
            b'p', b'a', b'r', b'e', b'u', b'0', b'.', b'1',
        ];
        let mut i = 0;
        while i < head.len() {
            b[i] = head[i];
            i += 1;
        }
        b
    };

    #[test]
    fn emit_produces_the_documented_layout() {
        let record = sample_record();
        assert_eq!(record.buffer_len(), SAMPLE_UNSIGNED.len());
        let mut packet = NodeRecordPacket::new_unchecked(vec![0u8; record.buffer_len()]);
        record.emit(&mut packet);
        assert_eq!(packet.into_inner(), SAMPLE_UNSIGNED.to_vec());
    }

    #[test]
    fn parse_reads_literal_bytes() {
        let packet = NodeRecordPacket::new_checked(&SAMPLE_UNSIGNED[..]).unwrap();
        assert_eq!(packet.seq(), 0x0102_0304_0506_0708);
        assert_eq!(packet.site(), b"par");
        assert_eq!(NodeRecord::parse(&packet).unwrap(), sample_record());
    }

    #[test]
    fn signed_record_round_trips_and_verifies() {
        let signed = sample_record().sign(&test_identity()).unwrap();
        let again = VerifiedNodeRecord::verify(signed.bytes()).unwrap();
        assert_eq!(again.record(), &sample_record());
        // ed25519 is deterministic: the signature over the literal bytes is fixed too.
        assert_eq!(
            &signed.bytes()[..SAMPLE_UNSIGNED.len() - 64],
            &SAMPLE_UNSIGNED[..SAMPLE_UNSIGNED.len() - 64]
        );
    }

    #[test]
    fn record_signed_by_another_key_is_refused() {
        let mut record = sample_record();
        let other = NodeIdentity::generate();
        record.node_id = other.node_id();
        let mut bytes = record.sign(&other).unwrap().bytes().to_vec();
        // Claim the test identity while keeping the other key's signature.
        bytes[18..50].copy_from_slice(test_identity().node_id().as_bytes());
        assert_eq!(
            VerifiedNodeRecord::verify(&bytes),
            Err(RecordError::BadSignature(test_identity().node_id()))
        );
    }

    #[test]
    fn any_flipped_bit_breaks_the_signature_or_the_format() {
        let bytes = sample_record()
            .sign(&test_identity())
            .unwrap()
            .bytes()
            .to_vec();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                VerifiedNodeRecord::verify(&b).is_err(),
                "bit flip at byte {i} accepted"
            );
        }
    }

    #[test]
    fn malformed_buffers_are_typed_errors() {
        let good = sample_record()
            .sign(&test_identity())
            .unwrap()
            .bytes()
            .to_vec();
        assert!(matches!(
            NodeRecordPacket::new_checked(&good[..100]),
            Err(RecordError::Truncated { .. })
        ));
        assert!(matches!(
            NodeRecordPacket::new_checked(&good[..good.len() - 1]),
            Err(RecordError::Truncated { .. })
        ));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            NodeRecordPacket::new_checked(&long[..]).unwrap_err(),
            RecordError::TrailingBytes { extra: 1 }
        );
        assert!(matches!(
            NodeRecordPacket::new_checked(&vec![0u8; MAX_RECORD_LEN + 1][..]),
            Err(RecordError::Oversized { .. })
        ));
        let mut b = good.clone();
        b[0] = 1;
        assert_eq!(
            NodeRecord::parse(&NodeRecordPacket::new_checked(&b[..]).unwrap()),
            Err(RecordError::UnsupportedVersion(1))
        );
        let mut b = good.clone();
        b[1] = 0x80;
        assert_eq!(
            NodeRecord::parse(&NodeRecordPacket::new_checked(&b[..]).unwrap()),
            Err(RecordError::UnknownFlags(0x80))
        );
        let mut b = good.clone();
        b[109 + 19] = 5; // contact kind
        assert!(matches!(
            NodeRecord::parse(&NodeRecordPacket::new_checked(&b[..]).unwrap()),
            Err(RecordError::BadContact { index: 0, kind: 5 })
        ));
        let mut b = good.clone();
        b[108] = 5; // contact count
        assert!(matches!(
            NodeRecordPacket::new_checked(&b[..]),
            Err(RecordError::TooManyContacts(5))
        ));
        let mut b = good.clone();
        b[109] = 5; // endpoint family
        assert!(matches!(
            NodeRecord::parse(&NodeRecordPacket::new_checked(&b[..]).unwrap()),
            Err(RecordError::BadEndpoint {
                index: 0,
                family: 5
            })
        ));
        let mut b = good.clone();
        b[86..90].copy_from_slice(&91_000_000i32.to_be_bytes());
        assert!(matches!(
            NodeRecord::parse(&NodeRecordPacket::new_checked(&b[..]).unwrap()),
            Err(RecordError::LocationOutOfRange { .. })
        ));
        let mut b = good;
        b[109 + 19 + 19] = b'\n'; // first byte of the site
        assert_eq!(
            NodeRecord::parse(&NodeRecordPacket::new_checked(&b[..]).unwrap()),
            Err(RecordError::BadText("site"))
        );
    }

    #[test]
    fn building_records_beyond_the_format_limits_fails_cleanly() {
        let mut record = sample_record();
        record.info.site = "x".repeat(256);
        assert_eq!(record.check(), Err(RecordError::TextTooLong("site")));
        let mut record = sample_record();
        record.info.underlay = vec!["[::1]:1".parse().unwrap(); MAX_ENDPOINTS + 1];
        assert!(record.sign(&test_identity()).is_err());
        let mut record = sample_record();
        record.contacts = vec![PeerAddr::Memory(1); MAX_CONTACTS + 1];
        assert_eq!(record.check(), Err(RecordError::TooManyContacts(5)));
        let mut record = sample_record();
        record.info.site.clear();
        assert_eq!(record.check(), Err(RecordError::BadText("site")));
    }

    #[test]
    fn largest_record_fits_the_maximum() {
        let mut record = sample_record();
        record.info.site = "s".repeat(MAX_TEXT_LEN);
        record.info.region = "r".repeat(MAX_TEXT_LEN);
        record.info.software_version = "v".repeat(MAX_TEXT_LEN);
        record.info.underlay = vec!["[2001:db8::1]:51820".parse().unwrap(); MAX_ENDPOINTS];
        record.contacts = vec![PeerAddr::Memory(u64::MAX); MAX_CONTACTS];
        let signed = record.sign(&test_identity()).unwrap();
        assert_eq!(signed.bytes().len(), MAX_RECORD_LEN);
        assert_eq!(
            VerifiedNodeRecord::verify(signed.bytes()).unwrap().record(),
            &record
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        crate::membership::fuzzing::exercise_with_random_inputs(2000);
    }
}
