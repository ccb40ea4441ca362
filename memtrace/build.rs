//! Builds the eBPF programs in `memtrace-ebpf` (with the nightly toolchain
//! and bpf-linker, which `cargo xtask` installs) so the binary embeds them.
//! Only with the `ebpf` feature (on by default): without it there is
//! nothing to build, and neither nightly nor bpf-linker is needed.

#[cfg(feature = "ebpf")]
fn main() -> anyhow::Result<()> {
    use anyhow::{Context as _, anyhow};

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "memtrace-ebpf")
        .ok_or_else(|| anyhow!("memtrace-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("memtrace-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install \
         the nightly rust-src component and bpf-linker 0.10.4",
    )
}

#[cfg(not(feature = "ebpf"))]
fn main() {
    // Nothing to build; don't rerun on every change to the package.
    println!("cargo::rerun-if-changed=build.rs");
}
