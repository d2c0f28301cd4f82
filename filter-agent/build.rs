//! Builds the XDP program (filter-ebpf) for the BPF target with nightly and embeds it, and
//! links libxdp and libbpf (Debian's libxdp-dev) through pkg-config.
//! `cargo xtask setup` installs what this needs: nightly's rust-src, bpf-linker,
//! pkg-config and libxdp-dev.

/// libxdp 1.3 (Debian 12) has the frags-aware dispatcher (protocol version 2).
const LIBXDP_MIN: &str = "1.3";

fn main() -> anyhow::Result<()> {
    for (library, min) in [("libxdp", LIBXDP_MIN), ("libbpf", "1.0")] {
        pkg_config::Config::new()
            .atleast_version(min)
            .probe(library)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{library} {min} or newer is needed (Debian: libxdp-dev; `cargo xtask setup` \
                     installs it): {e}"
                )
            })?;
    }
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
