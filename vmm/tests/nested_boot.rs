//! THE REAL THING: the default appliance booted by slicenet-vmm inside a nested
//! hardware-virtualization host (QEMU TCG `-cpu max` with kvm-amd), two VMs pinging each
//! other through a frame relay, the control API, exit statuses and cleanup.

mod common;

use std::path::Path;
use std::time::Duration;

use slicenet_vmm::appliance::Appliance;
use slicenet_vmm::nested::{qemu_available, NestedError, NestedHost, NestedRun};

const VMM: &str = env!("CARGO_BIN_EXE_slicenet-vmm");

#[test]
fn default_appliances_boot_ping_and_end_with_the_right_status_under_nested_kvm() {
    let test = "default_appliances_boot_ping_and_end_with_the_right_status_under_nested_kvm";
    if let Err(e) = qemu_available() {
        common::skip(test, &e.to_string());
        return;
    }
    let Some((appliance, cache)) = common::default_appliance(test) else {
        return;
    };
    let run = match nested_run(&appliance, &cache) {
        Ok(run) if !run.output.contains(TRIPLE_FAULT) => run,
        // The nested host is QEMU's software emulation of AMD-V. About one run in 40 here,
        // one of its guests reset early in boot without a word from its kernel (a triple
        // fault), and once in CI the run never finished; never twice in a row. That is
        // retried once, loudly, with what the first attempt printed. Any other failure,
        // or the same one again, fails the test.
        first => {
            let first = match first {
                Ok(run) => run.output,
                Err(NestedError::Timeout { reason, output }) => format!("{reason}\n{output}"),
                Err(e) => panic!("nested host: {e}"),
            };
            println!("RETRY: a nested guest triple-faulted or hung; first attempt:\n{first}");
            nested_run(&appliance, &cache).unwrap()
        }
    };
    println!("{}", run.output);
    println!("nested run took {:.1} s", run.elapsed.as_secs_f64());
    let out = &run.output;
    let has = |needle: &str| out.contains(needle);

    // A and B on one relay: A pings B, then powers off (status 0).
    assert!(has("SLICENET-READY vm-a"), "VM A reached its ready marker");
    assert!(
        has("3 packets transmitted, 3 packets received"),
        "A's pings reached B and back"
    );
    assert!(has("SLICENET-RUN-EXIT 0"), "A's command succeeded");
    assert!(has("VM-A-EXIT 0"), "poweroff ends the VMM with status 0");
    // B answered the control API and its console, used its disk, then panicked (status 11).
    assert!(has(r#""hostname":"vm-b""#), "status reports B ready");
    assert!(
        has("CONSOLE-42"),
        "the API console ran a command in B's shell"
    );
    assert!(
        has("DISK-READ slicenet-disk-content"),
        "B read its virtio-blk disk"
    );
    assert!(
        has("DISK-SECTOR1 WRITTEN"),
        "B's write reached the image file"
    );
    assert!(
        has("VM-B-EXIT 11"),
        "a kernel panic ends the VMM with status 11"
    );
    // C brought up both of its vCPUs and rebooted (status 10); D was stopped through the
    // control API (status 12).
    assert!(has("CPUS 2"), "the guest saw two vCPUs");
    assert!(has("VM-C-EXIT 10"), "a reboot ends the VMM with status 10");
    assert!(
        has("VM-D-STATUS-OK"),
        "D answered status before its guest was up"
    );
    assert!(has("VM-D-EXIT 12"), "stop ends the VMM with status 12");
    // E's initramfs was modified: refused with status 4 although its guest had started, the
    // error names the part, and nothing the guest printed reached the log.
    assert!(
        has("VM-E-EXIT 4"),
        "a hash mismatch ends the VMM with status 4"
    );
    assert!(has("VM-E-NAMES-INITRD"), "the error names the initramfs");
    // The default appliance carries a vmlinux: A booted it through PVH. F's vmlinux was cut
    // short: it cannot load, and the hash check's verdict (status 4, naming it) is reported.
    assert!(
        appliance.vmlinux_path().is_some(),
        "the default appliance has a vmlinux"
    );
    assert!(has("VM-A-PVH"), "A booted its vmlinux via PVH");
    assert!(
        has("VM-F-EXIT 4"),
        "a truncated vmlinux ends the VMM with status 4"
    );
    assert!(has("VM-F-NAMES-VMLINUX"), "the error names the vmlinux");
    assert!(
        has("VM-E-LOG-BYTES 0"),
        "no console output from an unverified guest"
    );
    // Nothing left behind: no VMM process, no VMM socket (the relay's own switch sockets
    // belong to the relay).
    assert!(has("VMM-PROCESSES 0"), "all VMM processes exited");
    let left = out
        .lines()
        .find_map(|l| l.strip_prefix("LEFT-SOCKETS"))
        .expect("listing of leftover sockets");
    assert_eq!(left.trim(), "", "VMM sockets left behind: {left}");
    assert!(has("NESTED-EXIT 0"));
}

/// What slicenet-vmm prints when its guest triple-faults.
const TRIPLE_FAULT: &str = "guest triple-faulted";

/// One run of [`SCRIPT`] in a fresh nested host with the VMM and the appliance.
fn nested_run(appliance: &Appliance, cache: &Path) -> Result<NestedRun, NestedError> {
    let mut host = NestedHost::new(appliance, cache)?;
    host.add_program("slicenet-vmm", Path::new(VMM))?;
    host.add_appliance("t/app", appliance)?;
    host.run(SCRIPT, Duration::from_secs(150))
}

const SCRIPT: &str = r#"
dd if=/dev/zero of=/t/disk.img bs=1024 count=1024 2>/dev/null
printf slicenet-disk-content | dd of=/t/disk.img conv=notrunc 2>/dev/null
slicenet-vmm relay --port /t/a.vm.sock:/t/a.sw.sock --port /t/b.vm.sock:/t/b.sw.sock 2>/dev/null &
relay=$!
slicenet-vmm run --appliance /t/app --hostname vm-d --api-sock /t/d.api 2>/t/d.err &
d=$!
while [ ! -S /t/d.api ]; do sleep 0.1; done
slicenet-vmm ctl --api /t/d.api status | grep -q '"ok":true' && echo VM-D-STATUS-OK
slicenet-vmm ctl --api /t/d.api stop >/dev/null
wait $d; echo "VM-D-EXIT $?"
slicenet-vmm run --appliance /t/app --hostname vm-b --disk path=/t/disk.img \
  --net vm=/t/b.vm.sock,switch=/t/b.sw.sock,ip=198.19.1.2/24 \
  --serial-log /t/b.log --api-sock /t/b.api --console-sock /t/b.console 2>/t/b.err &
b=$!
slicenet-vmm run --appliance /t/app --hostname vm-c --vcpus 2 --serial-log /t/c.log \
  --run 'echo "CPUS $(grep -c ^processor /proc/cpuinfo)"; reboot -f' 2>/t/c.err &
c=$!
slicenet-vmm run --appliance /t/app --hostname vm-a \
  --net vm=/t/a.vm.sock,switch=/t/a.sw.sock,ip=198.19.1.1/24 \
  --serial-log /t/a.log --api-sock /t/a.api \
  --run 'ping -c 3 -W 2 -w 60 198.19.1.2' 2>/t/a.err
echo "VM-A-EXIT $?"
wait $c; echo "VM-C-EXIT $?"
slicenet-vmm ctl --api /t/b.api status
(echo 'echo CONSOLE-$((6*7)); echo "DISK-READ $(head -c 21 /dev/vda)"'
 echo 'printf WRITTEN | dd of=/dev/vda bs=512 seek=1 conv=notrunc; sync; echo c >/proc/sysrq-trigger'
 sleep 30) | timeout 60 slicenet-vmm ctl --api /t/b.api console >/t/console.out &
console=$!
# Bounded wait: a B that never panics is stopped, and the test then fails on its status.
i=0; while kill -0 $b 2>/dev/null && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done
kill -0 $b 2>/dev/null && slicenet-vmm ctl --api /t/b.api stop
wait $b; echo "VM-B-EXIT $?"
kill $console 2>/dev/null
grep -E '^(CONSOLE-42|DISK-READ)' /t/console.out
kill $relay; wait $relay
echo "DISK-SECTOR1 $(dd if=/t/disk.img bs=512 skip=1 count=1 2>/dev/null | head -c 7)"
# A modified initramfs: here KVM works, so the hash check runs while the guest boots; the
# VMM must still refuse it (status 4) and let none of the guest's console output out.
mkdir /t/bad && cp /t/app/* /t/bad/ && echo tampered >>/t/bad/initrd.img
slicenet-vmm run --appliance /t/bad --hostname vm-e --serial-log /t/e.log 2>/t/e.err
echo "VM-E-EXIT $?"
echo "VM-E-LOG-BYTES $(wc -c </t/e.log)"
grep -q 'initrd' /t/e.err && echo VM-E-NAMES-INITRD
grep -q 'vmlinux via PVH' /t/a.err && echo VM-A-PVH
mkdir /t/short && cp /t/app/* /t/short/ && head -c 1000000 /t/app/vmlinux >/t/short/vmlinux
slicenet-vmm run --appliance /t/short --hostname vm-f --serial-log /t/f.log 2>/t/f.err
echo "VM-F-EXIT $?"
grep -q 'appliance vmlinux' /t/f.err && echo VM-F-NAMES-VMLINUX
echo "VMM-PROCESSES $(ps | grep -c '[s]licenet-vmm run')"
echo "LEFT-SOCKETS $(ls /t | grep -E 'vm.sock|api|console$' | tr '\n' ' ')"
grep -h -E 'packets|SLICENET' /t/a.log
grep -h '^CPUS' /t/c.log
for f in a b c d e f; do echo "--- $f.err"; cat /t/$f.err; done
"#;
