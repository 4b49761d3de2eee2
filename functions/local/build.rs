//! Links `aop` with packed relative relocations (`-z pack-relative-relocs`, `DT_RELR`) when it
//! is built for the machine it is built on and that machine's C library can load them (glibc
//! 2.36 or later). A position-independent Rust binary carries one 24-byte relocation for every
//! pointer in its read-only data, about 95,000 in `aop`: 2.2 MiB that the dynamic loader reads,
//! and keeps resident, at every start. Packed, they take a few KiB.
//!
//! Anything else (a cross build, musl, an older glibc, `AOP_LINK_RELR=0`) links as before: a
//! binary with `DT_RELR` does not start on a glibc without it, so it is used only where the
//! build proves the library has it.
//!
//! A release build for x86_64 Linux, which Rust links with its own LLD, also lays out the code
//! in the order of `aop.order` (`--symbol-ordering-file`): the functions that run at start and
//! in the common calls (3.8 MiB of the 26 MiB of text) placed together, so an idle server keeps
//! about 4 MiB of text resident instead of 13 to 15 MiB of 64 KiB windows (the kernel maps the
//! window around each page it faults in) spread across the whole binary. The names are the
//! release build's own, so the file matches that build (same compiler, same `Cargo.lock`, same
//! features); `scripts/link-order` regenerates it. `AOP_LINK_ORDER=0` turns it off, and so
//! does any `-C linker...` flag in the build's RUSTFLAGS (another linker may not know it).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AOP_LINK_RELR");
    println!("cargo:rerun-if-env-changed=AOP_LINK_ORDER");
    link_order();
    if std::env::var("AOP_LINK_RELR").is_ok_and(|v| v == "0") {
        return;
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != host || !target.ends_with("-linux-gnu") {
        return;
    }
    if glibc_version().is_some_and(|v| v >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Orders the release binary's sections by `aop.order` where the linker is Rust's LLD.
fn link_order() {
    println!("cargo:rerun-if-changed=aop.order");
    if std::env::var("AOP_LINK_ORDER").is_ok_and(|v| v == "0")
        || std::env::var("PROFILE").is_ok_and(|p| p != "release")
        || std::env::var("TARGET").is_ok_and(|t| t != "x86_64-unknown-linux-gnu")
        || std::env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("linker"))
    {
        return;
    }
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = std::path::Path::new(&dir).join("aop.order");
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names from another compiler or dependency version are skipped, not an error.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The build machine's glibc version, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn glibc_version() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.trim().strip_prefix("glibc ")?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit());
    Some((major, minor.parse().ok()?))
}
