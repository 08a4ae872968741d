//! A userspace WAN link emulator: the job `tc netem` does, for kernels
//! built without it (like the machines this project is developed on).
//!
//! A shaped link is a TAP device in each of its two sites; threads of this
//! process carry frames between the two TAP devices, delaying each frame by
//! the link's one-way delay (± jitter), dropping the configured share, and
//! pacing to the configured rate. Frames keep their order, as netem does
//! when a rate is set. The shape can change while traffic flows.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use crate::netns::NetNs;
use crate::topology::LinkShape;

/// Frames in flight per direction beyond which new frames are dropped
/// (netem's `limit`).
const QUEUE_LIMIT: usize = 10_000;
/// How often blocked threads look at the stop flag.
const POLL_INTERVAL_MS: u16 = 100;

/// Counters of one emulated link (both directions together).
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Frames delivered to the far side.
    pub delivered: AtomicU64,
    /// Frames dropped by the configured random loss.
    pub lost: AtomicU64,
    /// Frames dropped because the delay queue was full.
    pub overflowed: AtomicU64,
}

struct Direction {
    queue: Mutex<VecDeque<(Instant, Vec<u8>)>>,
    ready: Condvar,
}

/// A running emulated link between two TAP devices in two namespaces.
pub(crate) struct EmulatedLink {
    /// MAC addresses of the two TAP devices (a, b).
    pub(crate) macs: ([u8; 6], [u8; 6]),
    shape: Arc<Mutex<LinkShape>>,
    stop: Arc<AtomicBool>,
    counters: Arc<LinkCounters>,
    threads: Vec<JoinHandle<()>>,
}

/// Creates a TAP device inside `ns` and returns it with its MAC address
/// (read inside the namespace: the device's name means nothing outside).
fn open_tap(ns: &NetNs, name: &str) -> std::io::Result<(SyncDevice, [u8; 6])> {
    let ns = ns.clone();
    let name = name.to_string();
    let handle = ns.spawn_thread(move || {
        let dev = DeviceBuilder::new()
            .name(name)
            .layer(Layer::L2)
            .mtu(1500)
            .build_sync()?;
        let mac = dev.mac_address()?;
        Ok((dev, mac))
    });
    match handle.join() {
        Ok(Ok(dev)) => dev,
        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        Err(_) => Err(std::io::Error::other("TAP creation thread panicked")),
    }
}

/// Small deterministic PRNG (xorshift64*) so loss and jitter are
/// reproducible per link.
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl EmulatedLink {
    /// Creates TAP `if_a` in `ns_a` and `if_b` in `ns_b` and starts carrying
    /// frames between them with `shape`.
    pub(crate) fn start(
        ns_a: &NetNs,
        if_a: &str,
        ns_b: &NetNs,
        if_b: &str,
        shape: LinkShape,
        seed: u64,
    ) -> std::io::Result<Self> {
        let (tap_a, mac_a) = open_tap(ns_a, if_a)?;
        let (tap_b, mac_b) = open_tap(ns_b, if_b)?;
        let (tap_a, tap_b) = (Arc::new(tap_a), Arc::new(tap_b));
        let macs = (mac_a, mac_b);
        let mut link = EmulatedLink {
            macs,
            shape: Arc::new(Mutex::new(shape)),
            stop: Arc::new(AtomicBool::new(false)),
            counters: Arc::new(LinkCounters::default()),
            threads: Vec::new(),
        };
        for (i, (from, to)) in [(tap_a.clone(), tap_b.clone()), (tap_b, tap_a)]
            .into_iter()
            .enumerate()
        {
            let dir = Arc::new(Direction {
                queue: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
            });
            let (shape, stop, counters) =
                (link.shape.clone(), link.stop.clone(), link.counters.clone());
            let rx_dir = dir.clone();
            let rng = Rng(seed.wrapping_mul(2).wrapping_add(i as u64) | 1);
            link.threads.push(std::thread::spawn(move || {
                receive_loop(&from, &rx_dir, &shape, &stop, &counters, rng)
            }));
            let (stop, counters) = (link.stop.clone(), link.counters.clone());
            link.threads.push(std::thread::spawn(move || {
                deliver_loop(&to, &dir, &stop, &counters)
            }));
        }
        Ok(link)
    }

    /// Replaces the link's shape; frames already in flight keep theirs.
    pub(crate) fn set_shape(&self, shape: LinkShape) {
        *self.shape.lock().unwrap() = shape;
    }

    /// The link's counters.
    pub(crate) fn counters(&self) -> &LinkCounters {
        &self.counters
    }
}

impl Drop for EmulatedLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn wait_readable(dev: &SyncDevice) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(dev.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(POLL_INTERVAL_MS)), Ok(n) if n > 0)
}

fn receive_loop(
    from: &SyncDevice,
    dir: &Direction,
    shape: &Mutex<LinkShape>,
    stop: &AtomicBool,
    counters: &LinkCounters,
    mut rng: Rng,
) {
    let mut buf = vec![0u8; 65536];
    // Departure time of the last frame, to keep order and pace the rate.
    let mut last_departure = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(from) {
            continue;
        }
        let n = match from.recv(&mut buf) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let shape = *shape.lock().unwrap();
        if shape.loss_percent > 0.0 && rng.next_f64() * 100.0 < shape.loss_percent {
            counters.lost.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = Instant::now();
        let jitter = if shape.jitter_ms > 0.0 {
            (rng.next_f64() * 2.0 - 1.0) * shape.jitter_ms
        } else {
            0.0
        };
        let delay = Duration::from_secs_f64(((shape.delay_ms + jitter).max(0.0)) / 1000.0);
        let mut departure = (now + delay).max(last_departure);
        if let Some(rate) = shape.rate_mbit {
            let serialize = Duration::from_secs_f64(n as f64 * 8.0 / (rate.max(1) as f64 * 1e6));
            departure = departure.max(last_departure + serialize);
        }
        last_departure = departure;
        let mut queue = dir.queue.lock().unwrap();
        if queue.len() >= QUEUE_LIMIT {
            counters.overflowed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        queue.push_back((departure, buf[..n].to_vec()));
        dir.ready.notify_one();
    }
}

fn deliver_loop(to: &SyncDevice, dir: &Direction, stop: &AtomicBool, counters: &LinkCounters) {
    let mut queue = dir.queue.lock().unwrap();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        match queue.front() {
            None => {
                queue = dir
                    .ready
                    .wait_timeout(queue, Duration::from_millis(POLL_INTERVAL_MS as u64))
                    .unwrap()
                    .0;
            }
            Some((departure, _)) if *departure > now => {
                let wait = (*departure - now).min(Duration::from_millis(POLL_INTERVAL_MS as u64));
                queue = dir.ready.wait_timeout(queue, wait).unwrap().0;
            }
            Some(_) => {
                let (_, frame) = queue.pop_front().unwrap();
                drop(queue);
                if to.send(&frame).is_ok() {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
                queue = dir.queue.lock().unwrap();
            }
        }
    }
}
