//! The XDP object loads into the real kernel, with its BTF, and judges a frame.

use filter_agent::{dataplane::Dataplane, image::MapImage};
use filter_common::{Config, Family, Reason};

#[test]
fn program_loads_with_btf_and_passes_arp() {
    let mut config = Config::empty();
    config.set_port(25);
    let dataplane = Dataplane::load_with(&MapImage::new(config)).expect("load the XDP program");
    let info = dataplane.filter_program().unwrap().info().unwrap();
    assert!(
        info.btf_id().is_some(),
        "the kernel accepted the program without BTF (bpf-linker too old?)"
    );
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let verdict = dataplane.judge(&arp).unwrap();
    assert_eq!(verdict.verdict, filter_common::Verdict::Pass);
    assert_eq!(verdict.reason, Reason::NotIp);
    assert_eq!(verdict.family, Family::Other);
}
