//! Zero-copy views and representations of every packet format the data
//! plane reads or writes.
//!
//! Each format follows the same shape: a view `Xxx<T: AsRef<[u8]>>` over a
//! buffer whose `new_checked` validates lengths once, after which no
//! accessor can panic; field offsets live in a private `field` module; and,
//! where building packets matters, a `Repr` with `parse` and `emit`.

pub mod checksum;
pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vnet;
pub mod vxlan;

/// Why a buffer is not a valid packet of the expected format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header, or than a length the header declares.
    #[error("buffer too short for the header or for the length it declares")]
    Truncated,
    /// A header field holds a value this format does not allow.
    #[error("malformed header: {0}")]
    Malformed(&'static str),
}

/// Reads a big-endian `u16` at `at` (callers have checked the length).
#[inline]
pub(crate) fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Reads a big-endian `u32` at `at` (callers have checked the length).
#[inline]
pub(crate) fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}
