//! A tiny real-mode guest on this machine's own /dev/kvm (which may be PVM: tiny guests run
//! there even though stock kernels do not). It exercises the real vCPU run loop, port I/O
//! dispatch, the UART model and the ACPI power-off port, then snapshots vCPU and VM state.

mod common;

use std::sync::{Arc, Mutex};

use slicenet_vmm::bus::Bus;
use slicenet_vmm::devices::legacy::PlatformRequest;
use slicenet_vmm::devices::serial::{ConsoleOutput, SerialDevice};
use slicenet_vmm::vstate::{Vcpu, VcpuExitReason, Vm};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// mov dx,0x3f8; mov al,'O'; out dx,al; mov al,'K'; out dx,al; mov al,10; out dx,al;
/// mov dx,0x600; mov al,0x34 (SLP_TYP=5|SLP_EN); out dx,al; hlt
const GUEST: &[u8] = &[
    0xba, 0xf8, 0x03, 0xb0, b'O', 0xee, 0xb0, b'K', 0xee, 0xb0, 0x0a, 0xee, 0xba, 0x00, 0x06, 0xb0,
    0x34, 0xee, 0xf4,
];

fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => !common::skip(test, &format!("/dev/kvm is not usable: {e}")),
    }
}

#[test]
fn tiny_guest_writes_to_the_uart_and_powers_off_through_acpi() {
    let test = "tiny_guest_writes_to_the_uart_and_powers_off_through_acpi";
    if !kvm_usable(test) {
        return;
    }
    let vm = Vm::new(1 << 20, false).expect("create a 1 MiB VM");
    vm.memory()
        .write_slice(GUEST, GuestAddress(0x1000))
        .unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let output = ConsoleOutput::to_log(log.reopen().unwrap());
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFd::new(0).unwrap(),
        output,
    )));
    let bus = Bus::new(serial.clone(), Vec::new());
    let mut vcpu = Vcpu::new(&vm, 0, false).unwrap();
    vcpu.configure_real_mode(0x1000).unwrap();

    let reason = vcpu.run(&bus);

    assert_eq!(reason, VcpuExitReason::Platform(PlatformRequest::PowerOff));
    serial.lock().unwrap().flush();
    assert_eq!(std::fs::read_to_string(log.path()).unwrap(), "OK\n");
    let state = vcpu.save_state().unwrap();
    // RIP stopped right after the `out` to the power-off port.
    assert_eq!(state.regs.rip, 0x1000 + GUEST.len() as u64 - 1);
    let json = serde_json::to_string(&state).unwrap();
    let back: slicenet_vmm::vstate::VcpuState = serde_json::from_str(&json).unwrap();
    assert_eq!(back.regs.rip, state.regs.rip);
    let vm_state = vm.save_state().unwrap();
    assert_eq!(vm_state.memory.len(), 1);
    assert_eq!(vm_state.memory[0].size, 1 << 20);
    serde_json::to_string(&vm_state).unwrap();
}
