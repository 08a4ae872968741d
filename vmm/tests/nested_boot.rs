//! THE REAL THING: the default appliance booted by slicenet-vmm inside a nested
//! hardware-virtualization host (QEMU TCG `-cpu max` with kvm-amd), two VMs pinging each
//! other through a frame relay, the control API, exit statuses and cleanup.

mod common;

use std::path::Path;
use std::time::Duration;

use slicenet_vmm::nested::{qemu_available, NestedHost};

const VMM: &str = env!("CARGO_BIN_EXE_slicenet-vmm");

#[test]
fn two_default_appliances_boot_and_ping_each_other_under_nested_kvm() {
    let test = "two_default_appliances_boot_and_ping_each_other_under_nested_kvm";
    if let Err(e) = qemu_available() {
        common::skip(test, &e.to_string());
        return;
    }
    let Some((appliance, cache)) = common::default_appliance(test) else {
        return;
    };
    let mut host = NestedHost::new(&appliance, &cache).unwrap();
    host.add_program("slicenet-vmm", Path::new(VMM)).unwrap();
    for (_, part) in appliance.parts() {
        host.add_file(
            &format!("t/app/{}", part.path),
            &appliance.dir().join(&part.path),
            0o644,
        )
        .unwrap();
    }
    host.add_file(
        "t/app/appliance.toml",
        &appliance.dir().join("appliance.toml"),
        0o644,
    )
    .unwrap();
    let script = r#"
slicenet-vmm relay --port /t/a.vm.sock:/t/a.sw.sock --port /t/b.vm.sock:/t/b.sw.sock &
relay=$!
slicenet-vmm run --appliance /t/app --hostname vm-b \
  --net vm=/t/b.vm.sock,switch=/t/b.sw.sock,ip=198.19.1.2/24 \
  --serial-log /t/b.log --api-sock /t/b.api 2>/t/b.err &
b=$!
slicenet-vmm run --appliance /t/app --hostname vm-a \
  --net vm=/t/a.vm.sock,switch=/t/a.sw.sock,ip=198.19.1.1/24 \
  --serial-log /t/a.log --api-sock /t/a.api \
  --run 'ping -c 3 -W 2 -w 60 198.19.1.2' 2>/t/a.err
echo "VM-A-EXIT $?"
slicenet-vmm ctl --api /t/b.api status
slicenet-vmm ctl --api /t/b.api stop
wait $b
echo "VM-B-EXIT $?"
kill $relay
echo "--- a.log"; cat /t/a.log
echo "--- a.err"; cat /t/a.err
echo "--- b.err"; cat /t/b.err
echo "--- left behind"; ls /t
"#;
    let run = host.run(script, Duration::from_secs(240)).unwrap();
    println!("{}", run.output);
    println!("nested run took {:.1} s", run.elapsed.as_secs_f64());
    assert!(
        run.output.contains("VM-A-EXIT 0"),
        "VM A did not power off cleanly"
    );
}
