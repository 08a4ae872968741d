//! COM1: a 16550 UART (vm-superio) whose output goes to a log file, optionally stdout, and
//! every connected console client; input comes from console clients. The output is also
//! scanned for the appliance's ready marker and for kernel panics.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::appliance::READY_MARKER;

/// Raises the UART's interrupt through an eventfd (an irqfd on GSI 4 under KVM).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Facts learned from the guest's console output, shared with the control API.
#[derive(Debug, Default)]
pub struct ConsoleEvents {
    ready: Mutex<Option<(String, Duration)>>,
    panicked: AtomicBool,
}

impl ConsoleEvents {
    /// Hostname from the ready marker and how long after the VMM started it was seen.
    pub fn ready(&self) -> Option<(String, Duration)> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True once the console showed "Kernel panic - not syncing".
    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::Relaxed)
    }
}

/// Connected interactive console clients.
pub type ConsoleClients = Arc<Mutex<Vec<UnixStream>>>;

const LINE_CAP: usize = 512;
const LOG_FLUSH_BYTES: usize = 4096;
/// Output held back while the appliance is still being verified (far more than a kernel
/// prints while booting; beyond it the oldest output is kept and the rest dropped).
const MAX_HELD_BYTES: usize = 1 << 20;

/// Where UART output goes.
pub struct ConsoleOutput {
    started: Instant,
    announce: bool,
    log: Option<File>,
    stdout: bool,
    pending: Vec<u8>,
    line: Vec<u8>,
    clients: ConsoleClients,
    events: Arc<ConsoleEvents>,
    /// While `Some`, output is only collected here (see [`ConsoleOutput::hold`]).
    held: Option<Vec<u8>>,
}

impl ConsoleOutput {
    /// Output to `log` (if any) and stdout (if asked), plus `clients`; `started` is when the
    /// VMM started (the ready time is measured from it).
    pub fn new(
        log: Option<File>,
        stdout: bool,
        clients: ConsoleClients,
        started: Instant,
    ) -> ConsoleOutput {
        ConsoleOutput {
            started,
            announce: false,
            log,
            stdout,
            pending: Vec::new(),
            line: Vec::new(),
            clients,
            events: Arc::new(ConsoleEvents::default()),
            held: None,
        }
    }

    /// Output to `log` only, timed from now (tests, and tools that just want a log).
    pub fn to_log(log: File) -> ConsoleOutput {
        ConsoleOutput::new(Some(log), false, ConsoleClients::default(), Instant::now())
    }

    /// Holds all output back (nothing reaches the log, stdout or clients, and nothing is
    /// scanned) until [`ConsoleOutput::release`]: the guest may start while its appliance is
    /// still being verified, but nothing it says leaves the VMM before the check passes.
    pub fn hold(mut self) -> ConsoleOutput {
        self.held = Some(Vec::new());
        self
    }

    /// Ends a [`ConsoleOutput::hold`]: the held output goes out (and is scanned) now.
    pub fn release(&mut self) {
        if let Some(held) = self.held.take() {
            let _ = self.write(&held);
        }
    }

    /// Ends a [`ConsoleOutput::hold`] by discarding what was held (the check failed).
    pub fn discard(&mut self) {
        self.held = None;
        self.pending.clear();
    }

    /// Also print a line on stderr when the guest becomes ready (for people and benchmarks).
    pub fn announce_ready(mut self) -> ConsoleOutput {
        self.announce = true;
        self
    }

    /// The shared ready/panic facts.
    pub fn events(&self) -> Arc<ConsoleEvents> {
        self.events.clone()
    }

    fn scan(&mut self, byte: u8) {
        if byte == b'\n' {
            let line = String::from_utf8_lossy(&self.line);
            let line = line.trim_end_matches('\r');
            if let Some(host) = line
                .strip_prefix(READY_MARKER)
                .and_then(|r| r.strip_prefix(' '))
            {
                let mut ready = self.events.ready.lock().unwrap_or_else(|e| e.into_inner());
                if ready.is_none() {
                    let after = self.started.elapsed();
                    if self.announce {
                        eprintln!(
                            "slicenet-vmm: guest {} ready after {} ms",
                            host.trim(),
                            after.as_millis()
                        );
                    }
                    *ready = Some((host.trim().to_string(), after));
                }
            }
            if line.contains("Kernel panic - not syncing") {
                self.events.panicked.store(true, Ordering::Relaxed);
            }
            self.line.clear();
        } else if self.line.len() < LINE_CAP {
            self.line.push(byte);
        }
    }

    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(log) = &mut self.log {
            // A full disk must not stop the guest: the log is best effort.
            let _ = log.write_all(&self.pending);
        }
        if self.stdout {
            let mut out = io::stdout().lock();
            let _ = out.write_all(&self.pending);
            let _ = out.flush();
        }
        self.pending.clear();
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(held) = &mut self.held {
            let room = MAX_HELD_BYTES.saturating_sub(held.len());
            held.extend_from_slice(&buf[..buf.len().min(room)]);
            return Ok(buf.len());
        }
        for &b in buf {
            self.scan(b);
        }
        self.pending.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.pending.len() >= LOG_FLUSH_BYTES {
            self.flush_pending();
        }
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // Clients are non-blocking: a slow reader loses output rather than stalling the vCPU,
        // and a gone reader is dropped.
        clients.retain_mut(|c| match c.write(buf) {
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.held.is_some() {
            return Ok(());
        }
        self.flush_pending();
        Ok(())
    }
}

/// Serializable UART state (mirrors vm-superio's `SerialState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes not yet read by the guest.
    pub in_buffer: Vec<u8>,
    /// Console input waiting for room in the FIFO.
    #[serde(default)]
    pub pending_input: Vec<u8>,
}

/// Console input held back until the guest drains the 64-byte UART FIFO.
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// The COM1 device.
pub struct SerialDevice {
    uart: Serial<EventFdTrigger, NoEvents, ConsoleOutput>,
    /// Input that did not fit the FIFO yet (a paste, a script piped into the console).
    pending: std::collections::VecDeque<u8>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `output`.
    pub fn new(irq: EventFd, output: ConsoleOutput) -> SerialDevice {
        SerialDevice {
            uart: Serial::new(EventFdTrigger(irq), output),
            pending: Default::default(),
        }
    }

    /// Guest read of register `offset` (0..8). Reading the receive buffer makes room in the
    /// FIFO, which is refilled from pending console input.
    pub fn read(&mut self, offset: u8) -> u8 {
        if offset >= 8 {
            return 0xff;
        }
        let value = self.uart.read(offset);
        if offset == 0 && !self.pending.is_empty() {
            self.feed();
        }
        value
    }

    fn feed(&mut self) {
        let take = self.uart.fifo_capacity().min(self.pending.len());
        if take == 0 {
            return;
        }
        let bytes: Vec<u8> = self.pending.drain(..take).collect();
        // The only error is the interrupt eventfd failing; the bytes are queued regardless.
        let _ = self.uart.enqueue_raw_bytes(&bytes);
    }

    /// Guest write of register `offset` (0..8).
    pub fn write(&mut self, offset: u8, value: u8) {
        if offset < 8 {
            // Errors are the log or the irq eventfd failing: nothing the guest can act on.
            let _ = self.uart.write(offset, value);
        }
    }

    /// Queues console input for the guest (as much as fits goes to the FIFO now, the rest as
    /// the guest reads); returns how many bytes were accepted: input beyond 64 KiB of backlog
    /// is dropped.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let take = input
            .len()
            .min(MAX_PENDING_INPUT.saturating_sub(self.pending.len()));
        self.pending.extend(&input[..take]);
        self.feed();
        take
    }

    /// The console output (to hold, release or discard it).
    pub fn output_mut(&mut self) -> &mut ConsoleOutput {
        self.uart.writer_mut()
    }

    /// Flushes buffered output to the log.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }

    /// The device's state for snapshots.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
            pending_input: self.pending.iter().copied().collect(),
        }
    }

    /// Rebuilds a UART from a snapshot.
    pub fn restore(
        snapshot: &SerialSnapshot,
        irq: EventFd,
        output: ConsoleOutput,
    ) -> io::Result<SerialDevice> {
        let state = SerialState {
            baud_divisor_low: snapshot.baud_divisor_low,
            baud_divisor_high: snapshot.baud_divisor_high,
            interrupt_enable: snapshot.interrupt_enable,
            interrupt_identification: snapshot.interrupt_identification,
            line_control: snapshot.line_control,
            line_status: snapshot.line_status,
            modem_control: snapshot.modem_control,
            modem_status: snapshot.modem_status,
            scratch: snapshot.scratch,
            in_buffer: snapshot.in_buffer.clone(),
        };
        let uart = Serial::from_state(&state, EventFdTrigger(irq), NoEvents, output)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
        Ok(SerialDevice {
            uart,
            pending: snapshot.pending_input.iter().copied().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u8 = 0;
    const IER: u8 = 1;
    const LSR: u8 = 5;

    fn device() -> (
        SerialDevice,
        EventFd,
        tempfile::NamedTempFile,
        Arc<ConsoleEvents>,
    ) {
        let log = tempfile::NamedTempFile::new().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let output = ConsoleOutput::to_log(log.reopen().unwrap());
        let events = output.events();
        (
            SerialDevice::new(irq.try_clone().unwrap(), output),
            irq,
            log,
            events,
        )
    }

    #[test]
    fn guest_output_reaches_the_log_and_the_ready_marker_is_seen() {
        let (mut dev, _irq, log, events) = device();
        assert!(events.ready().is_none());
        for b in b"booting\nSLICENET-READY probe-1\n" {
            dev.write(THR, *b);
        }
        assert_eq!(
            std::fs::read_to_string(log.path()).unwrap(),
            "booting\nSLICENET-READY probe-1\n"
        );
        assert_eq!(events.ready().unwrap().0, "probe-1");
        assert!(!events.panicked());
        for b in b"[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n" {
            dev.write(THR, *b);
        }
        assert!(events.panicked());
    }

    #[test]
    fn held_output_leaves_only_when_released_and_never_when_discarded() {
        let log = tempfile::NamedTempFile::new().unwrap();
        let output = ConsoleOutput::to_log(log.reopen().unwrap()).hold();
        let events = output.events();
        let mut dev = SerialDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), output);
        for b in b"SLICENET-READY early\n" {
            dev.write(THR, *b);
        }
        dev.flush();
        assert_eq!(std::fs::read_to_string(log.path()).unwrap(), "");
        assert!(events.ready().is_none(), "held output is not scanned yet");
        dev.output_mut().release();
        for b in b"after\n" {
            dev.write(THR, *b);
        }
        assert_eq!(
            std::fs::read_to_string(log.path()).unwrap(),
            "SLICENET-READY early\nafter\n"
        );
        assert_eq!(events.ready().unwrap().0, "early");

        let log = tempfile::NamedTempFile::new().unwrap();
        let output = ConsoleOutput::to_log(log.reopen().unwrap()).hold();
        let mut dev = SerialDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), output);
        for b in b"from a kernel that failed its check\n" {
            dev.write(THR, *b);
        }
        dev.output_mut().discard();
        dev.flush();
        assert_eq!(std::fs::read_to_string(log.path()).unwrap(), "");
    }

    #[test]
    fn console_input_raises_the_receive_interrupt() {
        let (mut dev, irq, _log, _) = device();
        dev.write(IER, 0x01); // received-data-available interrupt on
        assert_eq!(dev.enqueue_input(b"ls\n"), 3);
        assert!(irq.read().unwrap() >= 1);
        assert_eq!(dev.read(LSR) & 0x01, 0x01, "data ready");
        assert_eq!(dev.read(THR), b'l');
        let snap = dev.snapshot();
        assert_eq!(snap.in_buffer, b"s\n");
        let restored = SerialDevice::restore(
            &snap,
            EventFd::new(0).unwrap(),
            ConsoleOutput::new(None, false, Default::default(), Instant::now()),
        )
        .unwrap();
        assert_eq!(restored.snapshot(), snap);
    }

    #[test]
    fn input_larger_than_the_fifo_arrives_as_the_guest_reads() {
        let (mut dev, _irq, _log, _) = device();
        let input: Vec<u8> = (0..200u8).collect();
        assert_eq!(dev.enqueue_input(&input), 200);
        let mut got = Vec::new();
        while dev.read(LSR) & 0x01 == 0x01 {
            got.push(dev.read(THR));
        }
        assert_eq!(got, input);
    }

    #[test]
    fn out_of_range_registers_are_ignored() {
        let (mut dev, _irq, _log, _) = device();
        assert_eq!(dev.read(200), 0xff);
        dev.write(200, 1);
    }
}
