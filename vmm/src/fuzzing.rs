//! Bodies of the cargo-fuzz targets (in `vmm/fuzz/`), kept in the library so that ordinary
//! unit tests run them over crafted and pseudo-random inputs in CI. Each must never panic,
//! whatever the input: manifests and control requests are untrusted, and so is everything a
//! guest writes to device registers and guest memory.

use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::appliance::{parse_mac, Manifest};
use crate::control::parse_request;
use crate::devices::virtio::blk::Block;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::{MmioTransport, VirtioDevice};
use crate::devices::IrqLine;

/// Parses arbitrary bytes as an appliance manifest.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(manifest) = Manifest::parse(text, Path::new("fuzz")) {
            // Whatever parses must also render and re-parse identically.
            let again =
                Manifest::parse(&manifest.to_toml(), Path::new("fuzz")).expect("round trip");
            assert_eq!(again, manifest);
        }
    }
}

/// Parses arbitrary bytes as a control API request.
pub fn control_request(data: &[u8]) {
    let _ = parse_request(data);
}

const GUEST_MEM: usize = 256 * 1024;

/// Plays a hostile guest against a virtio device: the first bytes fill guest memory (rings,
/// descriptors, buffers), the rest is a sequence of register accesses, notifications and
/// backend events. `data[0]` picks the device (even: net, odd: block).
pub fn virtio_device(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), GUEST_MEM)]).expect("memory");
    let fill = rest.len().min(GUEST_MEM / 4);
    mem.write_slice(&rest[..fill], GuestAddress(0))
        .expect("in range");
    let ops = &rest[fill..];
    let dir = tempfile::tempdir().expect("temporary directory");
    let (device, peer): (
        Box<dyn VirtioDevice>,
        Option<std::os::unix::net::UnixDatagram>,
    ) = if kind % 2 == 0 {
        let switch = dir.path().join("switch");
        let peer = std::os::unix::net::UnixDatagram::bind(&switch).expect("bind");
        peer.set_nonblocking(true).expect("nonblocking");
        let mac = parse_mac("02:00:00:00:00:01").expect("mac");
        let net = Net::new(mac, &dir.path().join("vm"), &switch).expect("net");
        (Box::new(net), Some(peer))
    } else {
        let image = dir.path().join("disk");
        std::fs::write(&image, vec![0u8; 8192]).expect("image");
        (
            Box::new(Block::new(&image, kind & 2 != 0).expect("block")),
            None,
        )
    };
    let mut transport = MmioTransport::new(device, mem, IrqLine::new().expect("eventfd"));
    for op in ops.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0x1ff);
        let value = [op[3], op[4], op[5], op[6]];
        match op[0] % 6 {
            0 | 1 => transport.write(offset, &value),
            2 => {
                let mut out = [0u8; 4];
                transport.read(offset, &mut out[..1 + (op[3] as usize % 4)]);
            }
            3 => transport.notify(op[3] as usize % 3),
            4 => {
                if let Some(peer) = &peer {
                    let len = 14 + usize::from(op[4]) * 8;
                    let _ = peer.send_to(&vec![op[5]; len], dir.path().join("vm"));
                }
                transport.process_backend();
            }
            _ => transport.write(offset & 0xfc, &value),
        }
    }
    let _ = transport.state();
    let _ = transport.metrics();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift generator: deterministic pseudo-random inputs without a dependency.
    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn fuzz_bodies_survive_random_inputs() {
        for seed in 0..200u64 {
            let data = random_bytes(seed, 64 + (seed as usize * 37) % 2000);
            manifest(&data);
            control_request(&data);
        }
        for seed in 0..60u64 {
            let data = random_bytes(seed, 200 + (seed as usize * 613) % 70_000);
            virtio_device(&data);
        }
    }

    #[test]
    fn fuzz_bodies_survive_crafted_inputs() {
        manifest(b"format = 1\nname = \"x\"\nversion = \"\"\ncmdline = \"\"\nvcpus = 1\nmemory_mib = 64\n[kernel]\npath = \"k\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n[initrd]\npath = \"i\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n");
        control_request(b"{\"op\":\"status\"}");
        control_request(&[b'{'; 10_000]);
        // A driver that sets up queue 0 at address 0 with garbage rings, marks it ready,
        // sets DRIVER_OK and notifies: the device must contain whatever the rings say.
        let mut ops = vec![0u8];
        ops.extend(random_bytes(7, GUEST_MEM / 4));
        for (offset, value) in [
            (0x070u16, 1u32),
            (0x070, 3),
            (0x070, 11),
            (0x030, 0),
            (0x038, 8),
            (0x080, 0x100),
            (0x090, 0x1000),
            (0x0a0, 0x2000),
            (0x044, 1),
            (0x070, 15),
        ] {
            ops.push(0);
            ops.extend(offset.to_le_bytes());
            ops.extend(value.to_le_bytes());
        }
        for q in 0..3u8 {
            ops.extend([3, 0, 0, q, 0, 0, 0]);
            ops.extend([4, 0, 0, 0, 200, 7, 0]);
        }
        virtio_device(&ops);
        ops[0] = 1;
        virtio_device(&ops);
    }
}
