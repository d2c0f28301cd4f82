//! Builds the XDP program (filter-ebpf) for the BPF target with nightly and embeds it.
//! `cargo xtask setup` installs what this needs: nightly's rust-src and bpf-linker.

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../filter-ebpf");
    // The kernel program also reads filter-common; rebuild when either changes.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../filter-common")
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "filter-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
