//! virtio-blk backed by a raw image file, with synchronous I/O in the VMM's event thread.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{read_config_bytes, DeviceError, DeviceMetrics, VirtioDevice};

/// Virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature: the device supports cache flush.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const REQ_HDR_LEN: usize = 16;
const CHUNK: usize = 64 * 1024;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// Serializable state of a block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSnapshot {
    /// The image file.
    pub path: PathBuf,
    /// Read-only attachment.
    pub read_only: bool,
    /// Capacity in sectors.
    pub capacity_sectors: u64,
    /// Counters.
    pub metrics: DeviceMetrics,
}

/// A virtio-blk device.
pub struct Block {
    file: File,
    path: PathBuf,
    read_only: bool,
    capacity_sectors: u64,
    id: [u8; 20],
    metrics: DeviceMetrics,
    buf: Vec<u8>,
}

impl Block {
    /// Opens `path` (read-only when asked); the capacity is the file size in whole sectors.
    pub fn new(path: &Path, read_only: bool) -> io::Result<Block> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let capacity_sectors = file.metadata()?.len() / SECTOR_SIZE;
        let mut id = [0u8; 20];
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        for (dst, src) in id.iter_mut().zip(name.bytes()) {
            *dst = src;
        }
        Ok(Block {
            file,
            path: path.to_path_buf(),
            read_only,
            capacity_sectors,
            id,
            metrics: DeviceMetrics::default(),
            buf: vec![0u8; CHUNK],
        })
    }

    /// Executes one request; returns (status, bytes written to the guest excluding status).
    fn execute(
        &mut self,
        kind: u32,
        sector: u64,
        reader: &mut dyn Read,
        data_in: usize,
        writer: &mut dyn Write,
        data_out: usize,
    ) -> (u8, u32) {
        let in_range = |len: usize| {
            sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|start| start.checked_add(len as u64))
                .is_some_and(|end| end <= self.capacity_sectors * SECTOR_SIZE)
        };
        match kind {
            T_IN => {
                if !in_range(data_out) {
                    return (S_IOERR, 0);
                }
                let mut offset = sector * SECTOR_SIZE;
                let mut left = data_out;
                while left > 0 {
                    let n = left.min(CHUNK);
                    if self.file.read_exact_at(&mut self.buf[..n], offset).is_err()
                        || writer.write_all(&self.buf[..n]).is_err()
                    {
                        return (S_IOERR, (data_out - left) as u32);
                    }
                    offset += n as u64;
                    left -= n;
                }
                self.metrics.rx_packets += 1;
                self.metrics.rx_bytes += data_out as u64;
                (S_OK, data_out as u32)
            }
            T_OUT => {
                if self.read_only || !in_range(data_in) {
                    return (S_IOERR, 0);
                }
                let mut offset = sector * SECTOR_SIZE;
                let mut left = data_in;
                while left > 0 {
                    let n = left.min(CHUNK);
                    if reader.read_exact(&mut self.buf[..n]).is_err()
                        || self.file.write_all_at(&self.buf[..n], offset).is_err()
                    {
                        return (S_IOERR, 0);
                    }
                    offset += n as u64;
                    left -= n;
                }
                self.metrics.tx_packets += 1;
                self.metrics.tx_bytes += data_in as u64;
                (S_OK, 0)
            }
            T_FLUSH => {
                if self.read_only || self.file.sync_data().is_ok() {
                    (S_OK, 0)
                } else {
                    (S_IOERR, 0)
                }
            }
            T_GET_ID => {
                let n = data_out.min(self.id.len());
                if writer.write_all(&self.id[..n]).is_err() {
                    return (S_IOERR, 0);
                }
                (S_OK, n as u32)
            }
            _ => (S_UNSUPP, 0),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_BLK_F_FLUSH | if self.read_only { VIRTIO_BLK_F_RO } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.capacity_sectors.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, _acked_features: u64) {}

    fn reset(&mut self) {}

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Result<bool, DeviceError> {
        let Some(queue) = queues.get_mut(index) else {
            return Ok(false);
        };
        let queue_err = |e: virtio_queue::Error| DeviceError::Queue {
            queue: index,
            reason: e.to_string(),
        };
        let mut used = false;
        for _ in 0..(QUEUE_SIZE as usize * 2) {
            let Some(chain) = queue.iter(mem).map_err(queue_err)?.next() else {
                break;
            };
            let head = chain.head_index();
            let readers = chain.clone().reader(mem);
            let writers = chain.writer(mem);
            let (mut reader, mut writer) = match (readers, writers) {
                (Ok(r), Ok(w))
                    if r.available_bytes() >= REQ_HDR_LEN && w.available_bytes() >= 1 =>
                {
                    (r, w)
                }
                _ => {
                    // No header or no status byte: nothing can be reported to the driver.
                    self.metrics.bad_descriptors += 1;
                    queue.add_used(mem, head, 0).map_err(queue_err)?;
                    used = true;
                    continue;
                }
            };
            let mut header = [0u8; REQ_HDR_LEN];
            let _ = reader.read_exact(&mut header);
            let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
            let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let data_in = reader.available_bytes();
            let data_out = writer.available_bytes() - 1;
            let mut status_writer = match writer.split_at(data_out) {
                Ok(w) => w,
                Err(_) => {
                    self.metrics.bad_descriptors += 1;
                    queue.add_used(mem, head, 0).map_err(queue_err)?;
                    used = true;
                    continue;
                }
            };
            let (status, written) =
                self.execute(kind, sector, &mut reader, data_in, &mut writer, data_out);
            if status == S_IOERR {
                self.metrics.io_errors += 1;
            }
            let _ = status_writer.write_all(&[status]);
            queue.add_used(mem, head, written + 1).map_err(queue_err)?;
            used = true;
        }
        Ok(used)
    }

    fn metrics(&self) -> DeviceMetrics {
        self.metrics.clone()
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(BlockSnapshot {
            path: self.path.clone(),
            read_only: self.read_only,
            capacity_sectors: self.capacity_sectors,
            metrics: self.metrics.clone(),
        })
        .expect("block snapshot serializes")
    }
}
